"""ilvr-cli: ILVR (Choi et al., ICCV 2021) on real images, from the command line and from Python.

One call per task, from images to images (docs/api.md; the same engine as the ``ilvr`` commands)::

    import ilvr_cli

    faces = ilvr_cli.upscale(["thumb.png"], model="ffhq", steps="100", seed=0)  # -> [PIL.Image]

Importing this package is cheap: nothing here imports torch. The task functions (``upscale``,
``translate``, ``edit``, ``paint2img``, ``sample``, from :mod:`ilvr_cli.api`) and the heavy modules
(``ilvr_cli.models``, ``ilvr_cli.diffusion``, ``ilvr_cli.ilvr``) are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Names exported lazily: name -> module that defines it.
_EXPORTS = {
    "upscale": "ilvr_cli.api",
    "translate": "ilvr_cli.api",
    "edit": "ilvr_cli.api",
    "paint2img": "ilvr_cli.api",
    "sample": "ilvr_cli.api",
    "ImagesFailedError": "ilvr_cli.api",
}

__all__ = ["ImagesFailedError", "__version__", "edit", "paint2img", "sample", "translate", "upscale"]

if TYPE_CHECKING:
    from ilvr_cli.api import ImagesFailedError, edit, paint2img, sample, translate, upscale


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ilvr_cli' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
