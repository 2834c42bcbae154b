"""Ship a trained demo run: copy its EMA weights into the package and (re)write the catalog entry ``demo``.

    python scripts/ship_demo.py RUN_DIR/ema.safetensors

The entry's architecture, diffusion config, exact parameter count, size and sha256 are read from the file,
so the catalog tests (which rebuild every config and hash the shipped file) stay consistent with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.models.checkpoints import META_DIFFUSION_CONFIG, META_UNET_CONFIG, read_native_metadata
from ilvr_cli.models.unet import count_parameters

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "ilvr_cli" / "data" / "demo" / "ema.safetensors"
CATALOG = ROOT / "src" / "ilvr_cli" / "data" / "catalog.json"
SOURCE_PAGE = "https://scikit-learn.org/stable/datasets/toy_dataset.html#optical-recognition-of-handwritten-digits-dataset"


def entry_for(path: Path) -> dict:
    """The catalog entry describing the shipped file ``path``."""
    meta = read_native_metadata(path)
    unet = UNetConfig.from_dict(json.loads(meta[META_UNET_CONFIG]))
    diffusion = DiffusionConfig.from_dict(json.loads(meta[META_DIFFUSION_CONFIG]))
    return {
        "kind": "diffusion",
        "family": "demo",
        "title": "Handwritten digits 32x32 (scikit-learn's 8x8 digits, upsampled): a small ADM trained with "
        "ilvr train, built in",
        "format": "ilvr-cli",
        "image_size": unet.image_size,
        "params": count_parameters(unet),
        "unet": unet.to_dict(),
        "diffusion": diffusion.to_dict(),
        "files": [
            {
                "name": path.name,
                "size": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "sources": [{"package": "demo/ema.safetensors"}],
            }
        ],  # fmt: skip
        "license": "MIT (weights, like ilvr-cli); training data CC BY 4.0: UCI Optical Recognition of "
        "Handwritten Digits, E. Alpaydin and C. Kaynak (1998), as bundled with scikit-learn",
        "source_page": SOURCE_PAGE,
        "defaults": {"respacing": "100", "upscale": {"factor": 4}, "translate": {"factor": 4, "range_t": 20}},
        "notes": "Shipped inside the package (no download); trained offline on CPU by scripts/train_demo.sh "
        f"(seed {meta.get('train_seed', '?')}, {meta.get('train_step', '?')} steps), recipe and samples in "
        "docs/training.md. Example inputs: `ilvr examples DEST` copies them to DEST/digits.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="RUN_DIR/ema.safetensors of the demo run")
    args = parser.parse_args()
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.weights, TARGET)
    catalog = json.loads(CATALOG.read_text(encoding="utf-8"))
    others = {k: v for k, v in catalog["models"].items() if k != "demo"}
    catalog["models"] = {"demo": entry_for(TARGET), **others}
    CATALOG.write_text(json.dumps(catalog, indent=2) + "\n", encoding="utf-8")
    print(f"{TARGET}: {catalog['models']['demo']['files'][0]['sha256']}")


if __name__ == "__main__":
    main()
