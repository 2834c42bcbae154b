"""Convert the NIQE release's ``modelparameters.mat`` to ``src/ilvr_cli/data/niqe_params.npz``.

Build-time only (needs scipy); the package reads the ``.npz`` with numpy alone. Also writes
``NIQE_LICENSE.txt``, the release's copyright notice, which must travel with the parameters.

    python scripts/convert_niqe_params.py [RELEASE_DIR]   # default: ../shared/niqe beside the checkout
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import scipy.io

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "src" / "ilvr_cli" / "data"
NOTICE_START = "-----------COPYRIGHT NOTICE STARTS WITH THIS LINE------------"
NOTICE_END = "-----------COPYRIGHT NOTICE ENDS WITH THIS LINE------------"


def convert(mat_path: Path, out_path: Path) -> None:
    """mu_prisparam (1, 36) -> mu (36,), cov_prisparam (36, 36) -> cov, both float64, bit-exact."""
    mat = scipy.io.loadmat(mat_path)
    mu = np.asarray(mat["mu_prisparam"], dtype=np.float64).reshape(-1)
    cov = np.asarray(mat["cov_prisparam"], dtype=np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise SystemExit(f"unexpected shapes {mu.shape} and {cov.shape} in {mat_path}")
    digest = hashlib.sha256(mat_path.read_bytes()).hexdigest()
    np.savez(out_path, mu=mu, cov=cov, source_sha256=np.array(digest))
    print(f"wrote {out_path} (from {mat_path.name}, sha256 {digest})")


def write_notice(readme: Path, out_path: Path) -> None:
    """The copyright notice section of the release's readme.txt, both marker lines included."""
    lines = readme.read_text(encoding="latin-1").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(NOTICE_START))
    end = next(i for i, line in enumerate(lines) if line.startswith(NOTICE_END))
    notice = [line.rstrip() for line in lines[start : end + 1]]
    header = [
        "The NIQE pristine model parameters in niqe_params.npz are converted from modelparameters.mat",
        "of the NIQE software release (LIVE, The University of Texas at Austin), distributed under the",
        "following notice, reproduced in full from the release's readme.txt:",
        "",
    ]
    out_path.write_text("\n".join(header + notice) + "\n", encoding="utf-8")
    print(f"wrote {out_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("release", nargs="?", type=Path, default=REPO.parent / "shared" / "niqe")
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    convert(args.release / "modelparameters.mat", DATA / "niqe_params.npz")
    write_notice(args.release / "readme.txt", DATA / "NIQE_LICENSE.txt")


if __name__ == "__main__":
    main()
