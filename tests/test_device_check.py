"""The CPU side of benchmarks/device_check.sh (the GPU check): its syntax, its --dry-run plan, that every
test it names is collected and every bench_unet.py flag it passes exists, that tests/test_cuda.py skips
here for the machine's reason only, and its summary, from canned outputs of a stand-in Python."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import MACHINE_SKIP_REASONS, REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "device_check.sh"
#: A plan line: ``[part] + timeout SECONDS COMMAND``.
PLAN_LINE = re.compile(r"^\[(?P<part>[\w-]+)\] \+ timeout (?P<cap>\d+) (?P<command>.*)$")
#: A safety net for a hung subprocess, far above what these runs need.
SAFETY_S = 300
#: The script's settings from the environment: a developer's own must not change what these tests see.
ENV_SETTINGS = ("OUT", "PYTHON", "VENV", "BUDGET_S", "BATCH", "GUIDED_DIFFUSION_DIR", "PEAK_TFLOPS")


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ENV_SETTINGS}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**environment, **env},
        cwd=REPO_ROOT,
        timeout=SAFETY_S,
    )


def plan(*args: str, **env: str) -> dict[str, tuple[int, list[str]]]:
    """The dry run's planned parts: name -> (timeout, argv)."""
    proc = run_script("--dry-run", *args, **env)
    assert proc.returncode == 0, proc.stderr
    parts = {}
    for line in proc.stdout.splitlines():
        match = PLAN_LINE.match(line)
        if match:
            parts[match["part"]] = (int(match["cap"]), shlex.split(match["command"]))
    return parts


@pytest.fixture(scope="module")
def planned() -> dict[str, tuple[int, list[str]]]:
    return plan()


def test_the_script_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=SAFETY_S)
    assert proc.returncode == 0, proc.stderr


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    """Every part with its timeout; together they fit the budget (less the summary's reserve); nothing
    is written, not even to OUT."""
    proc = run_script("--dry-run", OUT=str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "dry run: the plan only" in proc.stdout and "[setup] not needed" in proc.stdout
    parts = {m["part"]: int(m["cap"]) for m in map(PLAN_LINE.match, proc.stdout.splitlines()) if m}
    assert list(parts) == ["card", "peak", "tests", "bench_ffhq", "bench_adm256", "bench_ffhq_compile"]
    budget = int(re.search(r"budget (\d+)s", proc.stdout)[1])
    reserve = int(re.search(r"^RESERVE_S=(\d+)$", SCRIPT.read_text(), re.M)[1])
    assert budget == 480 and sum(parts.values()) <= budget - reserve
    assert "[gd_ffhq] not planned: GUIDED_DIFFUSION_DIR is not set" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_dry_run_with_setup_plans_the_venv_from_the_pinned_wheels(tmp_path: Path) -> None:
    parts = plan("--setup", VENV=str(tmp_path / "venv"))
    cap, argv = parts["setup"]
    command = argv[-1]
    assert argv[:2] == ["bash", "-c"] and cap <= 300
    assert f"python3 -m venv '{tmp_path / 'venv'}'" in command
    assert "install -q torch==2.14.1 torchvision==0.29.1" in command and "install -q -e '.[test]'" in command
    assert not (tmp_path / "venv").exists()


def test_an_unknown_option_is_a_usage_error() -> None:
    proc = run_script("--gpu")
    assert proc.returncode == 2 and "unknown option --gpu" in proc.stderr


def test_the_benchmarks_are_the_bf16_batch_16_runs_of_both_configs(planned) -> None:
    for config in ("ffhq", "adm256"):
        argv = planned[f"bench_{config}"][1]
        assert argv[1:] == [
            "benchmarks/bench_unet.py", "--device", "cuda", "--precision", "bf16", "--batch", "16",
            "--config", config,
        ]  # fmt: skip


def test_every_test_it_names_is_collected(planned) -> None:
    named = [a for a in planned["tests"][1] if a.startswith("tests/")]
    assert named[0] == "tests/test_cuda.py" and len(named) > 1
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *named],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=SAFETY_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    for name in named:
        ids = [c for c in collected if c == name or c.startswith(name + ("[" if "::" in name else "::"))]
        assert ids, f"{name} collects no test"


def test_bench_unet_lists_every_flag_it_is_given(planned) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_unet.py", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=SAFETY_S,
    )
    assert proc.returncode == 0, proc.stderr
    for part, (_, argv) in planned.items():
        if "benchmarks/bench_unet.py" not in argv:
            continue
        flags = [a for a in argv if a.startswith("--")]
        assert flags, part
        for flag in flags:
            assert re.search(rf"(^|\s){re.escape(flag)}\b", proc.stdout), f"{part}: {flag}"
        config = argv[argv.index("--config") + 1]
        assert re.search(rf"--config \{{[\w,]*\b{config}\b", proc.stdout), f"{part}: --config {config}"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="needs a machine without CUDA (where tests/test_cuda.py skips)"
)
def test_the_cuda_tests_are_collected_and_skip_here_for_the_machine() -> None:
    """Under CI=true, where any skip but the machine's fails (tests/conftest.py), every CUDA test skips."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "CI": "true"},
        timeout=SAFETY_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ skipped in [\d.]+s", summary), summary
    reasons = re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", proc.stdout, re.M)
    assert sum(int(n) for n, _ in reasons) == int(summary.split()[0]) >= 10
    assert all(reason.startswith(MACHINE_SKIP_REASONS) for _, reason in reasons)


# ------------------------------------------------------------------------ a run with canned outputs
#: Stands in for the GPU machine's Python: canned outputs for each part, and a copy of every helper
#: script it is given (so that the test can compile them).
FAKE_PYTHON = r"""#!/usr/bin/env bash
case "$*" in
  "-c import ilvr_cli, pytest") exit 0 ;;
esac
for arg in "$@"; do case "$arg" in *.py) [ -f "$arg" ] && cp "$arg" "$CAPTURE/" ;; esac; done
case "$*" in
  *card.py*) printf 'GPU 0: NVIDIA H200 (UUID: GPU-0)\ntorch: 2.14.1+cu128\ncuda (torch build): 12.8\n'
             printf 'cudnn: 91000\ncuda_available: True\nname: NVIDIA H200\ncapability: sm_90\n'
             printf 'memory: 139.8 GiB, 132 SMs\nbf16: True\nnccl: (2, 27, 3)\n' ;;
  *peak.py*) printf 'PEAK bf16 8192 back-to-back: 700.0 TFLOP/s\n'
             printf 'PEAK bf16 2048 one call per sync: 300.0 TFLOP/s\n' ;;
  *"-m pytest"*) printf '...s\nSKIPPED [1] tests/test_runtime.py:9: needs Linux with glibc\n'
                 printf '5 passed, 1 skipped in 3.21s\n'; exit "${FAKE_TESTS_RC:-0}" ;;
  *"--config ffhq"*) printf 'device            NVIDIA H200\nforward FLOPs     6206.4 GFLOP\n--- bf16\n'
                     printf 'matmul peak       300000.0 GFLOP/s (bf16 2048x2048)\n'
                     printf 'bare forward      0.0200 s  (310320.0 GFLOP/s, 103%% of bf16 matmul peak; 800.00 images/s)\n'
                     printf 'sampler step      0.0250 s  (overhead +25.0%% vs forward)\n' ;;
  # bench_unet.py's format before --precision took a list: no precision, no images/s
  *"--config adm256"*) printf 'bare forward      0.1000 s  (600000.0 GFLOP/s, 200%% of matmul peak)\n' ;;
  *"gd.py ffhq 16"*) printf 'GD ffhq: 93.6M parameters, batch 16, fp16 forward 0.2000 s, 80.0 images/s\n' ;;
  *"gd.py adm256 16"*) printf 'GD adm256: 552.8M parameters, batch 16, fp16 forward 0.4000 s, 40.0 images/s\n' ;;
  *) echo "fake python: unexpected $*" >&2; exit 3 ;;
esac
"""


def canned_run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON, encoding="utf-8")
    fake.chmod(0o755)
    (tmp_path / "capture").mkdir()
    settings = {"GUIDED_DIFFUSION_DIR": str(tmp_path), **env}
    return run_script(
        PYTHON=str(fake), OUT=str(tmp_path / "out"), CAPTURE=str(tmp_path / "capture"), **settings
    )


def test_the_summary_from_canned_outputs(tmp_path: Path) -> None:
    proc = canned_run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text(encoding="utf-8")
    assert summary in proc.stdout and (out / "device_check.log").read_text() == proc.stdout
    assert {p.name for p in out.glob("*.log")} >= {"card.log", "tests.log", "bench_ffhq.log", "gd_adm256.log"}
    assert "card     NVIDIA H200 (sm_90, 139.8 GiB, 132 SMs); torch 2.14.1+cu128, CUDA 12.8" in summary
    assert "tests    PASS: 5 passed, 1 skipped in 3.21s" in summary
    # 16 / 0.02 s = 800 images/s; 310.3 TFLOP/s of 700 (8192^2) and 989.4 (the H200's datasheet)
    assert (
        "ffhq     batch 16 bf16: forward 800.0 images/s; sampler step 640.0 images/s; 310.3 TFLOP/s = "
        in summary
    )
    assert (
        "103% of bench_unet.py's 2048^2 matmul peak, 44% of the 8192^2 matmul, 31% of the datasheet"
        in summary
    )
    assert (
        "ffhq     | bare forward      0.0200 s  (310320.0 GFLOP/s, 103% of bf16 matmul peak; 800.00 images/s)"
        in summary
    )
    assert "[NOT MET] forward >= 50% of the datasheet bf16 tensor peak: ffhq 31%, adm256 61%" in summary
    assert "[NOT MET] forward >= 50% of an 8192^2 bf16 matmul: ffhq 44%, adm256 86%" in summary
    assert (
        "[met] images/s at batch 16 >= 3x guided-diffusion's fp16 path: ffhq 800.0 vs 80.0 images/s = "
        in summary
    )
    assert "bench_ffhq_compile PASS" in summary and "result   PASS" in summary  # bench_unet has --compile
    for helper in ("card.py", "peak.py", "gd.py"):  # the Python the GPU machine would run compiles
        compile((tmp_path / "capture" / helper).read_text(), helper, "exec")


def test_a_failed_part_fails_the_run_and_says_which(tmp_path: Path) -> None:
    proc = canned_run(tmp_path, FAKE_TESTS_RC="1", GUIDED_DIFFUSION_DIR="")
    assert proc.returncode == 1
    assert "result   FAIL: tests FAIL(rc=1)" in proc.stdout
    assert "not measured: no guided-diffusion implementation on this machine" in proc.stdout


def test_parts_past_the_budget_are_not_started(tmp_path: Path) -> None:
    proc = canned_run(tmp_path, BUDGET_S="30")
    assert proc.returncode == 1
    assert "=== [card] not started" in proc.stdout and "card SKIPPED(out of time)" in proc.stdout
