"""Image input and output for the task commands: folder scan, loading and normalisation, atomic PNG and
GIF writing with parameters, the JSON Lines manifest, and contact sheets.

Needs numpy and Pillow, never torch: tensors are the business of :mod:`ilvr_cli.tasks`.
"""

from ilvr_cli.io.grid import make_grid
from ilvr_cli.io.load import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS, ImageData, load_image, load_mask
from ilvr_cli.io.manifest import MANIFEST_NAME, append_record, read_records
from ilvr_cli.io.scan import (
    IMAGE_EXTENSIONS,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    InputItem,
    InputSet,
    is_glob,
    scan_inputs,
)
from ilvr_cli.io.write import (
    PARAMS_KEY,
    atomic_write,
    read_png_params,
    read_png_text,
    save_gif,
    save_png,
    to_uint8,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MANIFEST_NAME",
    "PARAMS_KEY",
    "SUPPORTED_FORMATS",
    "UNSUPPORTED_IMAGE_EXTENSIONS",
    "ImageData",
    "InputItem",
    "InputSet",
    "append_record",
    "atomic_write",
    "is_glob",
    "load_image",
    "load_mask",
    "make_grid",
    "read_png_params",
    "read_png_text",
    "read_records",
    "save_gif",
    "save_png",
    "scan_inputs",
    "to_uint8",
]
