"""What a file without a published sha256 must pass before its hash is recorded on first use.

A first-use hash is a promise that later downloads are the same file, so it is only recorded for a file
that is plausibly the right one: not a web page (a sign-in, quota or error page served with a binary
content type), of the published size when one is known (checked by the downloader), and, for diffusion
models, readable as what its name says (a ``.pt`` state dict that fits the entry's architecture, a complete
``.safetensors`` file, a JSON object). Torch is imported only when a checkpoint is actually checked.
:func:`content_problem` gives the verdict on a downloaded (or reused) file: sha256, web page, content.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ilvr_cli.errors import CheckpointError, IlvrError
from ilvr_cli.registry.catalog import ModelSpec

__all__ = ["ContentCheck", "checkpoint_check", "content_problem", "looks_like_web_page"]

#: ``check(path, name)`` raises an :class:`~ilvr_cli.errors.IlvrError` when the file at ``path``, to be
#: stored as ``name``, is not what the entry expects.
ContentCheck = Callable[[Path, str], None]

_WEB_PAGE_STARTS = (
    b"<!doctype",
    b"<html",
    b"<head",
    b"<body",
    b"<?xml",
    b"<!--",
    b"<script",
    b"<meta",
    b"<title",
)
_WEB_NAMES = (".html", ".htm", ".xml", ".svg")
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def looks_like_web_page(path: Path, name: str) -> bool:
    """True when a file meant to be ``name`` starts like an HTML or XML page (checkpoints never start with
    ``<``). Only the first 512 bytes are read."""
    if name.lower().endswith(_WEB_NAMES):
        return False
    with open(path, "rb") as f:
        head = f.read(512)
    return head.removeprefix(b"\xef\xbb\xbf").lstrip().lower().startswith(_WEB_PAGE_STARTS)


def checkpoint_check(spec: ModelSpec) -> ContentCheck:
    """The check for a file of the diffusion entry ``spec``: it must load as what its name says.

    A ``.pt``/``.pth``/``.bin``/``.ckpt`` must be a plain state dict of tensors (``torch.load`` with
    ``weights_only=True``); for a single-file guided-diffusion entry its tensors must also fit the entry's
    UNet (names and shapes; no network is built). A ``.safetensors`` file must have a valid header that its
    data covers; a ``.json`` file must hold a JSON object. Other files are not inspected.
    """

    def check(path: Path, name: str) -> None:
        suffix = Path(name).suffix.lower()
        if suffix in _PICKLE_SUFFIXES:
            from ilvr_cli.models.checkpoints import read_state_dict
            from ilvr_cli.models.shape_inference import explain_mismatch

            state_dict = read_state_dict(path)
            if spec.unet is not None and spec.format == "guided-diffusion" and len(spec.files) == 1:
                problem = explain_mismatch(spec.unet, state_dict)
                if problem is not None:
                    raise CheckpointError(f"{path}: does not fit {spec.name}'s architecture ({problem})")
        elif suffix == ".safetensors":
            from ilvr_cli.models.checkpoints import read_native_metadata

            read_native_metadata(path)
        elif suffix == ".json":
            from ilvr_cli.models.diffusers_format import read_json

            read_json(path)

    return check


def content_problem(
    path: Path, name: str, expected: str | None, digest: str, check: ContentCheck | None
) -> str | None:
    """Why a file whose sha256 is ``digest`` cannot be ``name`` (None if it can): a web page, a hash that
    differs from ``expected``, or (no hash to compare with: first use) a failed content ``check``."""
    if expected is not None and digest == expected:
        return None
    if looks_like_web_page(path, name):
        return "served a web page (a sign-in, quota or error page?) instead of the file"
    if expected is not None:
        return f"sha256 mismatch (got {digest}, expected {expected})"
    if check is not None:
        try:
            check(path, name)
        except IlvrError as error:
            reason = str(error).removeprefix(f"{path}: ")
            return f"does not load as a checkpoint ({reason})"
    return None
