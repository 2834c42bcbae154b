"""FID speed: feature extraction (ours vs pytorch-fid, same random weights) and the 2048-d distance.

    .venv/bin/python benchmarks/bench_fid.py [--images 64] [--size 256] [--batch-size 32] [--workers N]

Needs pytorch-fid (test-only extra). Prints images/s of the whole path (PNG files -> 2048-d features) for
both implementations, the network alone, and the seconds of the Frechet distance between two 2048-d
statistics (target < 0.5 s on the CI CPU), ours and pytorch-fid's (scipy sqrtm).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from ilvr_cli.metrics import fid as fidlib
from ilvr_cli.metrics.inception import fid_inception_from_state_dict, random_state_dict


def _write_images(folder: Path, count: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def _rate(count: int, run, repeats: int = 1) -> float:
    """Images per second of ``run`` (best of ``repeats``: the machine may be shared)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def bench_features(args: argparse.Namespace) -> None:
    import pytorch_fid.fid_score as pfs
    import pytorch_fid.inception as pfi

    state = random_state_dict(seed=0)
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: state):
        reference = pfi.InceptionV3([3]).eval()
    ours = fid_inception_from_state_dict(state, 2048)
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_images(Path(tmp), args.images, args.size)
        warm = files[: args.batch_size]
        fidlib.extract_features(warm, ours, batch_size=args.batch_size)  # warm-up both
        pfs.get_activations(warm, reference, batch_size=args.batch_size, num_workers=0)

        def theirs_run(workers: int) -> None:
            pfs.get_activations(files, reference, args.batch_size, 2048, "cpu", workers)

        def ours_run(workers: int) -> None:
            fidlib.extract_features(files, ours, batch_size=args.batch_size, num_workers=workers)

        for workers in sorted({0, args.workers}):
            theirs_rate, ours_rate = 0.0, 0.0
            for _ in range(args.rounds):  # alternate, so changes of load hit both alike
                theirs_rate = max(theirs_rate, _rate(len(files), lambda w=workers: theirs_run(w)))
                ours_rate = max(ours_rate, _rate(len(files), lambda w=workers: ours_run(w)))
            print(
                f"features, {len(files)} PNGs {args.size}x{args.size} -> 2048-d, batch {args.batch_size}, "
                f"{workers} workers: ours {ours_rate:.2f} img/s, pytorch-fid {theirs_rate:.2f} img/s "
                f"(x{ours_rate / theirs_rate:.2f})"
            )
    batch = torch.rand(args.batch_size, 3, 299, 299)
    with torch.inference_mode():
        net_theirs = _rate(args.batch_size, lambda: reference(batch), args.rounds)
        net_ours = _rate(args.batch_size, lambda: ours(batch), args.rounds)
    print(
        f"network alone, batch {args.batch_size} at 299: ours {net_ours:.2f} img/s, pytorch-fid {net_theirs:.2f}"
    )


def bench_distance(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(1)
    dims = 2048
    stats = []
    for shift in (0.0, 0.2):
        features = rng.standard_normal((2 * dims, dims)) @ (
            np.eye(dims) + 0.02 * rng.standard_normal((dims, dims))
        )
        stats.append(fidlib.FIDStatistics.from_features(features + shift))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        value = fidlib.fid_from_statistics(*stats)
        times.append(time.perf_counter() - start)
    print(
        f"frechet distance 2048-d, ours: median {np.median(times):.3f} s, best {min(times):.3f} s "
        f"over {args.repeats} runs ({torch.get_num_threads()} torch threads); FID = {value:.6f}"
    )
    if args.reference_distance:
        import pytorch_fid.fid_score as pfs

        start = time.perf_counter()
        theirs = pfs.calculate_frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma)
        print(
            f"frechet distance 2048-d, pytorch-fid (scipy sqrtm): {time.perf_counter() - start:.3f} s; "
            f"FID = {theirs:.6f}; relative difference {abs(value - theirs) / abs(theirs):.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=fidlib.default_workers())
    parser.add_argument("--repeats", type=int, default=5, help="runs of the distance")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each feature extractor")
    parser.add_argument("--no-reference-distance", dest="reference_distance", action="store_false")
    parser.add_argument("--only", choices=["features", "distance"])
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load}"
    )
    if args.only != "distance":
        bench_features(args)
    if args.only != "features":
        bench_distance(args)


if __name__ == "__main__":
    main()
