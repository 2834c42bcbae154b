#!/usr/bin/env bash
# The GPU check: one prepared run for a machine with a CUDA GPU (docs/benchmarks.md, "The GPU check").
#
#   bash benchmarks/device_check.sh [--setup] [--dry-run]
#
# In order, each part under its own `timeout`, all of them within BUDGET_S (default 480 s, 8 minutes):
#   setup   only with --setup: create the venv when $PYTHON is missing (from the local wheel store, no network)
#   card    nvidia-smi -L, the driver, torch and its CUDA / cuDNN / NCCL versions, bf16 support
#   peak    the card's bf16 matmul throughput: an 8192^2 matmul (the practical tensor peak) and the 2048^2
#           matmul timed one call per sync that bench_unet.py takes as its peak
#   tests   pytest: tests/test_cuda.py and the existing tests that exercise devices (TESTS below)
#   bench   bench_unet.py --device cuda --precision bf16 --batch 16 for --config ffhq (93.6M) and adm256 (552.8M)
#   gd      guided-diffusion's fp16 forward on the same card, only where GUIDED_DIFFUSION_DIR names a checkout
#   compile bench_unet.py ... --compile, only once bench_unet.py has that option
# then one summary block (tests pass/fail, images/s, share of the bf16 peak, the two targets).
#
# Environment: PYTHON (default $VENV/bin/python), VENV (default .venv), OUT (a folder: every log, the
# summary and this transcript are written there too), BUDGET_S, BATCH (default 16), GUIDED_DIFFUSION_DIR,
# PEAK_TFLOPS (the card's datasheet dense bf16 TFLOP/s, for cards the summary does not know).
# --dry-run prints the plan (every command with its timeout) and runs nothing: no GPU, no python needed.
# Exit status: 0 when every planned part passed, 1 otherwise, 2 for a usage error.
set -uo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

SETUP=0
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --setup) SETUP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "device_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-$VENV/bin/python}"
BUDGET_S="${BUDGET_S:-480}"
BATCH="${BATCH:-16}"
#: Seconds kept for the summary; a part that would get fewer than MIN_PART_S is not started.
RESERVE_S=15
MIN_PART_S=20
#: What the GPU machine installs (README, "Set up"): pinned torch from its local wheel store.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

#: The tests it runs: the CUDA-only tests, and existing tests whose behaviour depends on the machine's
#: devices (the CUDA noise test; device resolution; gloo runs with --device cpu on a machine that has
#: CUDA; the docs examples, which use --device auto and so run on the GPU there).
TESTS=(
  tests/test_cuda.py
  tests/test_sampler.py::test_cuda_noise_and_autocast
  tests/test_runtime.py
  tests/test_training_ddp.py
  tests/test_tasks_cli.py::test_two_ranks_under_torchrun_equal_one_process
  tests/test_docs.py
)
#: bench_unet.py configs: guided-diffusion flags of ilvr_adm's FFHQ model and of the LSUN/ImageNet-256 one.
CONFIGS=(ffhq adm256)

# ------------------------------------------------------------------------------------------ the parts
PARTS_FILE=""
STARTED=$SECONDS
DEADLINE=$((SECONDS + BUDGET_S))

record() { # name status seconds
  [ -n "$PARTS_FILE" ] && printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$PARTS_FILE"
  return 0
}

# run_part NAME CAP COMMAND...: run COMMAND under `timeout` (CAP, or what is left of the budget), its output
# also in $WORK/NAME.log; records PASS, FAIL (rc), TIMEOUT or SKIPPED (out of time).
run_part() {
  local name=$1 cap=$2
  shift 2
  local quoted
  quoted=$(printf '%q ' "$@")
  if ((DRY_RUN)); then
    printf '[%s] + timeout %s %s\n' "$name" "$cap" "${quoted% }"
    return 0
  fi
  local left=$((DEADLINE - SECONDS - RESERVE_S))
  local limit=$((cap < left ? cap : left))
  if ((limit < MIN_PART_S)); then
    printf '\n=== [%s] not started: %ss of the %ss budget left\n' "$name" "$((left + RESERVE_S))" "$BUDGET_S"
    record "$name" "SKIPPED(out of time)" 0
    return 1
  fi
  printf '\n=== [%s] + timeout %s %s\n' "$name" "$limit" "${quoted% }"
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
  rc=${PIPESTATUS[0]}
  local status=PASS
  if ((rc == 124 || rc == 137)); then
    status="TIMEOUT(${limit}s)"
  elif ((rc != 0)); then
    status="FAIL(rc=$rc)"
  fi
  record "$name" "$status" "$((SECONDS - start))"
  [ "$status" = PASS ]
}

# not_planned NAME WHY: a part that does not run here, and why (it shows in the plan and the summary).
not_planned() {
  printf '[%s] not planned: %s\n' "$1" "$2"
  record "$1" "NOT PLANNED: $2" 0
}

write_helpers() { # the Python the parts run, into $1
  cat >"$1/card.py" <<'PY'
"""The card as the driver and as torch see it: nvidia-smi, versions, the device, bf16 support."""

import subprocess

import torch

query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
failed = False
for command in (["nvidia-smi", "-L"], ["nvidia-smi", f"--query-gpu={query}", "--format=csv"]):
    try:
        print(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"{command[0]}: {error}")
        failed = True
print(f"torch: {torch.__version__}")
print(f"cuda (torch build): {torch.version.cuda}")
print(f"cudnn: {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
print(f"cuda_available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"name: {props.name}")
    print(f"capability: sm_{props.major}{props.minor}")
    print(f"memory: {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs")
    print(f"bf16: {torch.cuda.is_bf16_supported()}")
    print(f"devices: {torch.cuda.device_count()}")
    nccl = torch.cuda.nccl.version() if torch.distributed.is_nccl_available() else None
    print(f"nccl: {nccl}")
raise SystemExit(1 if failed or not torch.cuda.is_available() else 0)
PY
  cat >"$1/peak.py" <<'PY'
"""The card's bf16 matmul throughput, timed with CUDA events over back-to-back calls."""

import time

import torch


def tflops(n: int, calls: int, per_sync: bool) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        if per_sync:  # bench_unet.py's way: one call between two synchronisations, wall clock
            for _ in range(calls):
                start = time.perf_counter()
                a @ b
                torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
        else:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(calls):
                a @ b
            end.record()
            torch.cuda.synchronize()
            best = min(best, begin.elapsed_time(end) / 1000 / calls)
    return 2 * n**3 / best / 1e12


print(f"PEAK bf16 8192 back-to-back: {tflops(8192, 20, per_sync=False):.1f} TFLOP/s")
print(f"PEAK bf16 2048 one call per sync: {tflops(2048, 5, per_sync=True):.1f} TFLOP/s")
PY
  cat >"$1/gd.py" <<'PY'
"""guided-diffusion's fp16 path (create_model(use_fp16=True) + convert_to_fp16()) on the same card: the
forward of the flags bench_unet.py times, batch BATCH, best of several rounds. Usage: gd.py CONFIG BATCH."""

import os
import sys
import time

sys.path.insert(0, os.environ["GUIDED_DIFFUSION_DIR"])
sys.path.insert(0, "benchmarks")
import torch  # noqa: E402
from bench_unet import CONFIGS  # noqa: E402  (the same flags as our runs)
from guided_diffusion.script_util import create_model  # noqa: E402

name, batch = sys.argv[1], int(sys.argv[2])
flags = CONFIGS[name]
model = create_model(**flags, use_fp16=True)
model.convert_to_fp16()
model = model.cuda().eval()
params = sum(p.numel() for p in model.parameters())
size = flags["image_size"]
x = torch.randn(batch, 3, size, size, device="cuda")
t = torch.full((batch,), 500, device="cuda", dtype=torch.long)
best = float("inf")
with torch.no_grad():
    for round_ in range(8):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(x, t)
        torch.cuda.synchronize()
        if round_ >= 2:  # two warm-up calls
            best = min(best, time.perf_counter() - start)
print(
    f"GD {name}: {params / 1e6:.1f}M parameters, batch {batch}, fp16 forward {best:.4f} s, "
    f"{batch / best:.1f} images/s"
)
PY
}

main() {
  if ((DRY_RUN)); then
    HELPERS="<helpers>"
    WORK="${OUT:-<a temporary folder>}"
  else
    HELPERS=$(mktemp -d)
    trap 'rm -rf "$HELPERS"' EXIT
    write_helpers "$HELPERS"
    WORK="${OUT:-$(mktemp -d)}"
    mkdir -p "$WORK"
    PARTS_FILE="$WORK/parts.tsv"
    : >"$PARTS_FILE"
  fi

  echo "GPU check of ilvr-cli: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -n), $(nproc 2>/dev/null) CPUs"
  echo "python $PYTHON, batch $BATCH, budget ${BUDGET_S}s, logs in $WORK"
  ((DRY_RUN)) && echo "dry run: the plan only, nothing is run"

  # setup: only with --setup, only what is missing
  if [ -x "$PYTHON" ] && { ((DRY_RUN)) || "$PYTHON" -c "import ilvr_cli, pytest" 2>/dev/null; }; then
    printf '[setup] not needed: %s exists\n' "$PYTHON"
  elif ((SETUP)) && [ "$PYTHON" = "$VENV/bin/python" ]; then
    run_part setup 300 bash -c "{ [ -x '$VENV/bin/python' ] || python3 -m venv '$VENV'; } && '$VENV/bin/pip' install -q ${TORCH_PINS[*]} && '$VENV/bin/pip' install -q -e '.[test]'" || true
  elif ((SETUP)); then
    run_part setup 300 "$PYTHON" -m pip install -q -e ".[test]" || true
  else
    echo "[setup] $PYTHON is missing or lacks ilvr_cli/pytest: pass --setup, or set PYTHON" >&2
    ((DRY_RUN)) || return 2
  fi

  run_part card 30 "$PYTHON" "$HELPERS/card.py"
  local cuda=1
  if ! ((DRY_RUN)) && ! grep -q '^cuda_available: True' "$WORK/card.log" 2>/dev/null; then
    cuda=0
    echo "torch sees no CUDA device here: the CUDA tests will skip and the GPU parts are not run" >&2
  fi

  if ((cuda)); then
    run_part peak 30 "$PYTHON" "$HELPERS/peak.py"
  else
    not_planned peak "torch sees no CUDA device"
  fi
  run_part tests 120 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m "not slow" \
    --junitxml "$WORK/pytest.xml" "${TESTS[@]}"

  local config
  for config in "${CONFIGS[@]}"; do
    if ((cuda)); then
      local cap=75
      [ "$config" = adm256 ] && cap=100
      run_part "bench_$config" "$cap" "$PYTHON" benchmarks/bench_unet.py \
        --device cuda --precision bf16 --batch "$BATCH" --config "$config"
    else
      not_planned "bench_$config" "torch sees no CUDA device"
    fi
  done

  for config in "${CONFIGS[@]}"; do
    if [ -z "${GUIDED_DIFFUSION_DIR:-}" ]; then
      not_planned "gd_$config" "GUIDED_DIFFUSION_DIR is not set: no guided-diffusion code on this machine"
    elif ! ((cuda)); then
      not_planned "gd_$config" "torch sees no CUDA device"
    else
      run_part "gd_$config" 90 env GUIDED_DIFFUSION_DIR="$GUIDED_DIFFUSION_DIR" \
        "$PYTHON" "$HELPERS/gd.py" "$config" "$BATCH"
    fi
  done

  if ! grep -q -- '"--compile"' benchmarks/bench_unet.py; then
    not_planned bench_ffhq_compile "benchmarks/bench_unet.py has no --compile option yet"
  elif ! ((cuda)); then
    not_planned bench_ffhq_compile "torch sees no CUDA device"
  else
    run_part bench_ffhq_compile 110 "$PYTHON" benchmarks/bench_unet.py \
      --device cuda --precision bf16 --batch "$BATCH" --config ffhq --compile
  fi

  if ((DRY_RUN)); then
    echo "then: the summary block (tests, images/s, share of the bf16 peak, the targets)"
    return 0
  fi
  summarize "$HELPERS"
}

summarize() { # print the summary block, also into $WORK/summary.txt; returns 0 when every planned part passed
  cat >"$1/summarize.py" <<'PY'
"""The summary block of a device check, from the parts' logs (standard library only)."""

import os
import re
import sys
from pathlib import Path

work, batch, budget, used = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
#: Dense (no sparsity) bf16 tensor TFLOP/s from NVIDIA's datasheets, by device name; PEAK_TFLOPS overrides.
DATASHEET = [("H200 NVL", 835.0), ("H200", 989.4), ("H100 80GB HBM3", 989.4), ("A100", 312.0)]


def read(name):
    path = work / f"{name}.log"
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


def field(text, key):
    match = re.search(rf"^{re.escape(key)}: (.*)$", text, re.M)
    return match.group(1).strip() if match else None


parts = [line.split("\t") for line in (work / "parts.tsv").read_text().splitlines() if line.strip()]
status = {name: state for name, state, _ in parts}
card = read("card")
name = field(card, "name") or "unknown device"
lines = ["", "=" * 30 + " GPU check summary " + "=" * 30]
lines.append(
    f"card     {name} ({field(card, 'capability')}, {field(card, 'memory')}); torch "
    f"{field(card, 'torch')}, CUDA {field(card, 'cuda (torch build)')}, cuDNN {field(card, 'cudnn')}, "
    f"NCCL {field(card, 'nccl')}, bf16 {field(card, 'bf16')}"
)
lines.append(f"time     {used} s of the {budget} s budget")

tests = read("tests")
counts = re.findall(r"^=*\s*(\d+ \w+.*? in [\d.]+s.*?)\s*=*$", tests, re.M)  # "5 passed, 1 skipped in 3.2s"
lines.append(f"tests    {status.get('tests', 'not run')}: {counts[-1] if counts else 'no pytest summary'}")
cuda_skips = [s for s in re.findall(r"^SKIPPED \[\d+\] (.*)$", tests, re.M) if "test_cuda.py" in s]
if cuda_skips and field(card, "cuda_available") == "True":
    status["tests"] = "FAIL(CUDA tests skipped on a CUDA machine)"
    lines.append("         CUDA tests skipped although torch sees a CUDA device: " + "; ".join(cuda_skips))
for failed in re.findall(r"^(?:FAILED|ERROR) (\S+)", tests, re.M):
    lines.append(f"         failed: {failed}")

peak = read("peak")
big = re.search(r"PEAK bf16 8192 back-to-back: ([\d.]+) TFLOP/s", peak)
small = re.search(r"PEAK bf16 2048 one call per sync: ([\d.]+) TFLOP/s", peak)
big_tf = float(big.group(1)) if big else None
sheet_tf = (
    float(os.environ["PEAK_TFLOPS"])
    if os.environ.get("PEAK_TFLOPS")
    else next((tf for key, tf in DATASHEET if key in name), None)
)
lines.append(
    f"peak     bf16 matmul: {big_tf or '?'} TFLOP/s (8192^2, back to back); "
    f"{small.group(1) if small else '?'} TFLOP/s (2048^2, one call per sync: what bench_unet.py "
    f"calls its matmul peak); datasheet {sheet_tf or '? (set PEAK_TFLOPS)'} TFLOP/s dense"
)

ours, shares = {}, {}
for config in ("ffhq", "adm256", "ffhq_compile"):
    text = read(f"bench_{config}")
    if not text:
        continue
    for line in text.splitlines():  # the raw lines, as bench_unet.py printed them
        if re.search(r"matmul peak|bare forward|sampler step|images/s", line):
            lines.append(f"{config:<8} | {line.strip()}")
    # "bare forward  0.0200 s  (310320.0 GFLOP/s, 78% of bf16 matmul peak; 800.00 images/s)", or without the
    # precision and images/s (bench_unet.py before --precision took a list)
    forward = re.search(r"bare forward\s+([\d.]+) s\s+\(([\d.]+) GFLOP/s, (\d+)% of (?:\w+ )?matmul peak", text)
    step = re.search(r"sampler step\s+([\d.]+) s", text)
    if not forward:
        lines.append(f"{config:<8} no 'bare forward' line: {status.get('bench_' + config, 'not run')}")
        continue
    seconds, gflops = float(forward.group(1)), float(forward.group(2))
    ours[config] = batch / seconds
    tf = gflops / 1000
    share = [f"{forward.group(3)}% of bench_unet.py's 2048^2 matmul peak"]
    if big_tf:
        shares.setdefault(config, {})["measured"] = 100 * tf / big_tf
        share.append(f"{100 * tf / big_tf:.0f}% of the 8192^2 matmul")
    if sheet_tf:
        shares.setdefault(config, {})["datasheet"] = 100 * tf / sheet_tf
        share.append(f"{100 * tf / sheet_tf:.0f}% of the datasheet peak")
    step_text = f"; sampler step {batch / float(step.group(1)):.1f} images/s" if step else ""
    lines.append(
        f"{config:<8} batch {batch} bf16: forward {batch / seconds:.1f} images/s{step_text}; "
        f"{tf:.1f} TFLOP/s = {', '.join(share)}"
    )

gd = {}
for config in ("ffhq", "adm256"):
    match = re.search(r"GD \S+: .*?, ([\d.]+) images/s", read(f"gd_{config}"))
    if match:
        gd[config] = float(match.group(1))

lines.append("targets")
for key, label in (("datasheet", "the datasheet bf16 tensor peak"), ("measured", "an 8192^2 bf16 matmul")):
    got = {c: s[key] for c, s in shares.items() if key in s}
    if got:
        verdict = "met" if all(v >= 50 for v in got.values()) else "NOT MET"
        values = ", ".join(f"{c} {v:.0f}%" for c, v in got.items())
        lines.append(f"  [{verdict}] forward >= 50% of {label}: {values}")
    else:
        lines.append(f"  [unknown] forward >= 50% of {label}: not measured")
lines.append(
    "           (bench_unet.py's own '% of matmul peak' divides by a 2048^2 matmul timed one call per "
    "sync: launch and sync overhead on a call of tens of microseconds can put it far below a large "
    "GPU's peak, and the percentage then reads high; compare the peak line above)"
)
if gd:
    ratios = {c: ours[c] / gd[c] for c in gd if c in ours}
    verdict = "met" if ratios and all(r >= 3 for r in ratios.values()) else "NOT MET"
    values = ", ".join(f"{c} {ours[c]:.1f} vs {gd[c]:.1f} images/s = {r:.2f}x" for c, r in ratios.items())
    lines.append(
        f"  [{verdict}] images/s at batch {batch} >= 3x guided-diffusion's fp16 path: {values or 'no pair'}"
    )
else:
    lines.append(
        f"  [unknown] images/s at batch {batch} >= 3x guided-diffusion's fp16 path: not measured: "
        "no guided-diffusion implementation on this machine (offline; set GUIDED_DIFFUSION_DIR to "
        "a checkout to time it); no number is assumed in its place"
    )

planned = [(n, s) for n, _, s in parts if not status[n].startswith("NOT")]
lines.append("parts    " + " | ".join(f"{n} {status[n]} {s}s" for n, s in planned))
lines.extend(f"         {n} {status[n]}" for n, _, _ in parts if status[n].startswith("NOT"))
bad = [f"{n} {status[n]}" for n, _ in planned if status[n] != "PASS"]
planned_ok = not bad
lines.append("result   PASS: every planned part passed" if planned_ok else "result   FAIL: " + ", ".join(bad))
print("\n".join(lines))
(work / "summary.txt").write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")
sys.exit(0 if planned_ok else 1)
PY
  python3 "$1/summarize.py" "$WORK" "$BATCH" "$BUDGET_S" "$((SECONDS - STARTED))" || return 1
}

if [ -n "${OUT:-}" ] && ! ((DRY_RUN)); then
  mkdir -p "$OUT"
  main 2>&1 | tee "$OUT/device_check.log"
  exit "${PIPESTATUS[0]}"
fi
main
