"""``ilvr --help`` against a minimal two-command Typer app's ``--help``, timed in one run.

Each round starts both as fresh processes (interleaved, so a busy machine slows both alike) and the
medians are compared. Prints the medians and their ratio; the goal (docs/benchmarks.md) is a ratio of at
most 1.15.

    .venv/bin/python benchmarks/bench_cli_help.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MINIMAL_APP = '''
import typer

app = typer.Typer()


@app.command()
def one(x: int = 1) -> None:
    """One."""


@app.command()
def two(y: int = 2) -> None:
    """Two."""


app()
'''


def wall_time(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        minimal = Path(tmp) / "minimal_app.py"
        minimal.write_text(MINIMAL_APP)
        commands = {
            "minimal Typer app --help": [sys.executable, str(minimal), "--help"],
            "ilvr --help": [sys.executable, "-m", "ilvr_cli", "--help"],
        }
        for command in commands.values():  # warm the file cache
            wall_time(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(wall_time(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:28s} median {median * 1000:7.1f} ms  (min {min(times[name]) * 1000:.1f} ms)")
    ratio = medians["ilvr --help"] / medians["minimal Typer app --help"]
    print(f"ratio ilvr / minimal: {ratio:.2f}  ({args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
