"""One call from images to images per task: ``upscale``, ``translate``, ``edit``, ``paint2img`` and ``sample``.

These run the task engine of the ``ilvr`` commands (:func:`ilvr_cli.tasks.run_task`, ILVR as in Choi et al.,
ICCV 2021, Algorithm 1) over a temporary folder, so a result is pixel for pixel what the command writes
for the same input, seed and options (docs/api.md):

1. input ``i`` is written losslessly to ``<tmp>/in/{i:06d}.png``, upright (EXIF orientation) and in a mode
   the loader reads as it reads the original (:func:`_png_ready`), so a path and the PIL image opened from
   it give the same result,
2. the task runs over that folder with a :class:`~ilvr_cli.tasks.TaskConfig` of the options given here,
   so the noise key of sample ``k`` of input ``i`` is ``"{i:06d}.png#{k}"``: ``ilvr upscale 000000.png``
   (or a folder holding the inputs under those names) gives the same pixels,
3. the PNGs are read back (their ``ilvr-cli`` parameters in ``image.info``) and the folder is removed.

Results come back as a flat list in input order; with ``samples=k`` the k samples of each input are
consecutive: ``result[i * k + j]`` is sample j of input i (diffusers' ``num_images_per_prompt`` order).
An input that cannot be used raises :class:`ImagesFailedError` (an :class:`~ilvr_cli.errors.InputError`)
naming it; what is checked from the image headers fails before the model is loaded.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from PIL import Image, ImageOps

from ilvr_cli.errors import IlvrError, InputError, UsageError
from ilvr_cli.io.files import DECODE_ERRORS
from ilvr_cli.io.load import DEFAULT_MAX_PIXELS, open_decoded
from ilvr_cli.registry.handle import ModelHandle
from ilvr_cli.tasks.config import FitPolicy, KernelName, Method, Precision, TaskConfig, TaskName, parse_range

if TYPE_CHECKING:
    from ilvr_cli.models.checkpoints import LoadedModel
    from ilvr_cli.tasks.plan import TaskPlan
    from ilvr_cli.tasks.progress import TaskProgress

__all__ = [
    "ImageInput",
    "ImagesFailedError",
    "ModelArg",
    "edit",
    "input_name",
    "paint2img",
    "sample",
    "translate",
    "upscale",
]

#: One input image: a PIL image or the path of an image file (PNG, JPEG, WebP, BMP, TIFF).
ImageInput: TypeAlias = "Image.Image | str | os.PathLike[str]"
#: ``None`` (the task's default model), a catalog name or checkpoint path, an opened
#: :class:`~ilvr_cli.registry.ModelHandle` (loaded once, reused by every call) or a ``LoadedModel``.
ModelArg: TypeAlias = "str | os.PathLike[str] | ModelHandle | LoadedModel | None"
TRange: TypeAlias = "tuple[int, int] | str | None"

#: Pillow modes written to PNG as they are (the engine then reads exactly what it would read from the file).
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})

#: The command-line options named in the engine's messages -> the keyword arguments here.
_KEYWORDS = {
    "factor": "factor",
    "fit": "fit",
    "steps": "steps",
    "samples": "samples",
    "batch-size": "batch_size",
    "count": "count",
    "device": "device",
    "eta": "eta",
    "exact": "exact",
    "precision": "precision",
    "mask": "mask",
    "model": "model",
    "range": "t_range",
    "sampler": "method",
    "filter": "kernel",
    "max-megapixels": "max_pixels",
}


class ImagesFailedError(InputError):
    """Some inputs could not be used: ``failures`` holds (input index, message) for each; ``images`` the
    results in the usual order, ``None`` for each sample of a failed input (the others still ran)."""

    def __init__(
        self,
        message: str,
        failures: Sequence[tuple[int, str]] = (),
        images: Sequence[Image.Image | None] = (),
    ) -> None:
        super().__init__(message)
        self.failures = list(failures)
        self.images = list(images)


def input_name(index: int) -> str:
    """The file name input ``index`` gets (its samples' noise keys are ``f"{input_name(i)}#{k}"``)."""
    return f"{index:06d}.png"


@dataclass(frozen=True)
class _Source:
    """One input as given, and how messages name it."""

    index: int
    value: Image.Image | Path

    def describe(self) -> str:
        if isinstance(self.value, Path):
            return f"image {self.index} ({self.value})"
        width, height = self.value.size
        return f"image {self.index} (a {width}x{height} {self.value.mode} PIL image)"


# ---------------------------------------------------------------------------------------------- inputs
def _sources(images: ImageInput | Sequence[ImageInput], what: str = "images") -> list[_Source]:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    sources = []
    for index, value in enumerate(images):
        if isinstance(value, Image.Image):
            sources.append(_Source(index, value))
        elif isinstance(value, (str, os.PathLike)):
            sources.append(_Source(index, Path(value).expanduser()))
        else:
            raise UsageError(
                f"{what}[{index}] is a {type(value).__name__}; give a PIL image or the path of an image file"
            )
    if not sources:
        raise UsageError(f"no {what} given")
    return sources


def _upright(image: Image.Image) -> Image.Image:
    """The EXIF orientation applied, as :mod:`ilvr_cli.io.load` does (a broken EXIF block is ignored)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - as the loader: malformed EXIF must not fail a good image
        return image


def _png_ready(image: Image.Image) -> Image.Image:
    """A mode PNG stores, chosen so that :func:`ilvr_cli.io.load.to_rgb_float` reads the same pixels: the
    modes the loader converts (CMYK, YCbCr, LAB, HSV, premultiplied alpha) are converted as it does."""
    mode = image.mode
    if mode in _PNG_MODES:
        return image
    if mode in ("PA", "RGBa"):
        return image.convert("RGBA")
    if mode == "La":
        return image.convert("LA")
    if mode.startswith("I"):  # 32-bit or big-endian 16-bit grey: the loader reads value / 65535, clipped
        return Image.fromarray(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
    if mode == "F":  # float grey in [0, 1]: kept to 16 bits
        values = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
        return Image.fromarray(np.round(values * 65535).astype(np.uint16))
    return image.convert("RGB")


def _write_image(source: _Source, target: Path, max_pixels: int) -> None:
    """``source`` as a PNG at ``target``, holding the pixels the command would read from it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(source.value, Path):
            with open_decoded(source.value, max_pixels) as image:
                _png_ready(_upright(image)).save(target, "PNG")
        else:
            source.value.load()
            _png_ready(_upright(source.value)).save(target, "PNG")
    except IlvrError:
        raise
    except (*DECODE_ERRORS, Image.DecompressionBombError) as error:
        raise InputError(f"{source.describe()}: cannot be read or stored as PNG ({error})") from None


def _write_inputs(sources: Sequence[_Source], folder: Path, max_pixels: int) -> None:
    """Every input as ``folder/{i:06d}.png``; inputs that cannot be read fail together, by index."""
    failed = []
    for source in sources:
        try:
            _write_image(source, folder / input_name(source.index), max_pixels)
        except InputError as error:
            failed.append((source.index, f"image {source.index}: {error}"))
    if failed:
        more = f" (and {len(failed) - 1} more input(s) that failed)" if len(failed) > 1 else ""
        raise ImagesFailedError(failed[0][1] + more, failed)


def _write_masks(mask: Any, count: int, root: Path, max_pixels: int) -> Path | None:
    """``mask`` -> ``--mask``: one image for every input (a file), or one per input (a folder)."""
    if mask is None:
        return None
    if isinstance(mask, (str, os.PathLike, Image.Image)):
        _write_image(_sources(mask, "mask")[0], root / "mask.png", max_pixels)
        return root / "mask.png"
    masks = _sources(mask, "mask")
    if len(masks) != count:
        raise UsageError(f"mask: give one mask for every image, or a list of {count}; got {len(masks)}")
    for source in masks:
        _write_image(source, root / "masks" / input_name(source.index), max_pixels)
    return root / "masks"


# ---------------------------------------------------------------------------------------------- model
def _model(model: ModelArg) -> tuple[str | None, ModelHandle | None]:
    """(``TaskConfig.model``: None for the task's default model, which the plan opens; the handle to run
    with, or None to open the name)."""
    if model is None:
        return None, None
    if isinstance(model, ModelHandle):
        return model.name, model
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model), None
    if hasattr(model, "network") and hasattr(model, "unet_config"):  # a LoadedModel
        handle = ModelHandle.from_loaded(model)
        return handle.name, handle
    raise UsageError(
        f"model: a {type(model).__name__}; give a catalog name, a checkpoint path, an "
        "ilvr_cli.registry.open_model(...) handle or what load_model(...) returned"
    )


# ---------------------------------------------------------------------------------------------- messages
class _Messages:
    """The engine's messages, with the temporary names replaced by the inputs as the caller gave them and
    the command-line options by the keyword arguments (``--fit`` -> ``'fit'``)."""

    def __init__(self, root: Path, sources: Sequence[_Source]) -> None:
        self.replacements: list[tuple[str, str]] = [(str(root / "mask.png"), "the mask")]
        for source in sources:
            name = input_name(source.index)
            self.replacements.append((str(root / "masks" / name), f"the mask of {source.describe()}"))
            self.replacements.append((str(root / "in" / name), source.describe()))
        for source in sources:
            self.replacements.append((input_name(source.index), source.describe()))
        self.replacements.append((str(root), "<temporary folder>"))

    def __call__(self, message: str) -> str:
        for old, new in self.replacements:
            message = message.replace(old, new)
        return re.sub(
            r"--([a-z][a-z-]*)",
            lambda m: f"'{_KEYWORDS[m.group(1)]}'" if m.group(1) in _KEYWORDS else m.group(0),
            message,
        )

    def error(self, error: IlvrError) -> IlvrError:
        """The same kind of error with the message rewritten (the error itself if nothing changed)."""
        message = self(str(error))
        if message == str(error):
            return error
        try:
            return type(error)(message)
        except TypeError:  # a subclass with another constructor: keep it as it is
            return error


#: How :func:`ilvr_cli.tasks.plan_task` starts the error it raises when no input passes the header checks.
_NO_INPUT = "no input can be used: "


def _header_failures(config: TaskConfig, labels: Sequence[str], handle: ModelHandle) -> list[tuple[str, str]]:
    """(label, message) for each of ``labels`` that fails the checks made from its header (size, format)
    before any model is loaded: each input is planned alone, so the message is the command's own."""
    from ilvr_cli.tasks.plan import plan_task

    assert config.input is not None
    failed = []
    for label in labels:
        try:
            plan_task(config.replace(input=str(Path(config.input) / label)), handle)
        except UsageError as error:
            if str(error).startswith(_NO_INPUT):
                failed.append((label, str(error).removeprefix(_NO_INPUT)))
    return failed


def _plan(config: TaskConfig, handle: ModelHandle, count: int) -> TaskPlan:
    """The run's plan; the inputs that fail their header checks raise :class:`ImagesFailedError` here,
    before the model is loaded (the command would run the others and list these as failed)."""
    from ilvr_cli.tasks.plan import plan_task

    try:
        plan = plan_task(config, handle)
    except UsageError as error:
        if not str(error).startswith(_NO_INPUT):
            raise
        failed = _header_failures(config, [input_name(i) for i in range(count)], handle)
        if not failed:
            raise
        raise _HeaderFailures(failed) from None
    if plan.inputs is not None and plan.input_factors:
        labels = [item.rel.as_posix() for item in plan.inputs.items]
        missing = [label for label in labels if label not in plan.input_factors]
        failed = _header_failures(config, missing, handle)
        if failed:
            raise _HeaderFailures(failed)
    return plan


class _HeaderFailures(Exception):
    """Inputs that failed their header checks (label, message): turned into an ImagesFailedError."""

    def __init__(self, failed: list[tuple[str, str]]) -> None:
        super().__init__(failed)
        self.failed = failed


def _read(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()  # in memory, with its ilvr-cli parameters in .info


def _run(
    task: TaskName,
    images: ImageInput | Sequence[ImageInput] | None,
    model: ModelArg,
    *,
    mask: Any = None,
    progress: TaskProgress | None = None,
    **options: Any,
) -> list[Image.Image]:
    from ilvr_cli.tasks.plan import open_task_model
    from ilvr_cli.tasks.runner import run_plan

    if isinstance(options.get("t_range"), str):
        options["t_range"] = parse_range(options["t_range"])
    if isinstance(options.get("steps"), int):
        options["steps"] = str(options["steps"])
    max_pixels = options.get("max_pixels", DEFAULT_MAX_PIXELS)
    sources = [] if images is None else _sources(images)
    name, handle = _model(model)
    with tempfile.TemporaryDirectory(prefix="ilvr-api-") as tmp:
        root = Path(tmp)
        messages = _Messages(root, sources)
        _write_inputs(sources, root / "in", max_pixels)
        try:
            config = TaskConfig(
                task=task,
                model=name,
                input=None if images is None else str(root / "in"),
                output=root / "out",
                mask=_write_masks(mask, len(sources), root, max_pixels),
                **options,
            )
            handle = handle or open_task_model(config)
            plan = _plan(config, handle, len(sources))
            result = run_plan(plan, progress)  # the plan just checked, not planned again
        except _HeaderFailures as failures:
            raise _failure(messages, failures.failed, []) from None
        except IlvrError as error:
            raise messages.error(error) from None
        outputs = [
            None if unit.output.as_posix() not in result.done else _read(root / "out" / unit.output)
            for unit in plan.units
        ]
        if result.failed:
            raise _failure(messages, [(f.input, f.error) for f in result.failed], outputs)
    return [image for image in outputs if image is not None]


def _failure(
    messages: _Messages, failed: Sequence[tuple[str, str]], outputs: Sequence[Image.Image | None]
) -> ImagesFailedError:
    """One error naming every input that failed (by index and as given), with the results of the others."""
    indexed = []
    for label, message in failed:
        index = int(label.split(".")[0]) if re.fullmatch(r"\d{6}\.png", label) else -1
        text = messages(message if label in message else f"{label}: {message}")
        indexed.append((index, text))
    indexed.sort()
    more = f" (and {len(indexed) - 1} more input(s) that failed)" if len(indexed) > 1 else ""
    return ImagesFailedError(indexed[0][1] + more, indexed, outputs)


# ---------------------------------------------------------------------------------------------- the tasks
def upscale(
    images: ImageInput | Sequence[ImageInput],
    *,
    model: ModelArg = None,
    factor: int | None = None,
    steps: str | int | None = None,
    t_range: TRange = None,
    samples: int = 1,
    seed: int = 0,
    kernel: KernelName = "cubic",
    exact: bool = False,
    fit: FitPolicy = "none",
    method: Method = "ddpm",
    eta: float = 0.0,
    batch_size: int = 4,
    device: str = "auto",
    precision: Precision = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: TaskProgress | None = None,
) -> list[Image.Image]:
    """Low-resolution images -> images at the model's resolution whose down_N follows the input
    (``ilvr upscale``: the input is the thumbnail l = down_N(y), N = model size / input size; an input at
    the model's size is shrunk by ``factor`` first). Options as :class:`~ilvr_cli.tasks.TaskConfig`'s;
    ``model=None``: the task's default model (ffhq). Returns ``len(images) * samples`` images (module
    docstring for the order); raises :class:`ImagesFailedError` naming an input that cannot be used."""
    return _run(
        "upscale", images, model, progress=progress, factor=factor, steps=steps, t_range=t_range,
        samples=samples, seed=seed, kernel=kernel, exact=exact, fit=fit, method=method, eta=eta,
        batch_size=batch_size, device=device, precision=precision, cache_dir=cache_dir, offline=offline,
        max_pixels=max_pixels,
    )  # fmt: skip


def translate(
    images: ImageInput | Sequence[ImageInput],
    *,
    model: ModelArg = None,
    factor: int | None = None,
    steps: str | int | None = None,
    t_range: TRange = None,
    samples: int = 1,
    seed: int = 0,
    kernel: KernelName = "cubic",
    exact: bool = False,
    fit: FitPolicy = "none",
    method: Method = "ddpm",
    eta: float = 0.0,
    batch_size: int = 4,
    device: str = "auto",
    precision: Precision = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: TaskProgress | None = None,
) -> list[Image.Image]:
    """References from any domain -> images of the model's domain with their layout and colours
    (``ilvr translate``: N = 32, conditioning t = T .. 0.2 T by default). ``model=None``: afhq-dog."""
    return _run(
        "translate", images, model, progress=progress, factor=factor, steps=steps, t_range=t_range,
        samples=samples, seed=seed, kernel=kernel, exact=exact, fit=fit, method=method, eta=eta,
        batch_size=batch_size, device=device, precision=precision, cache_dir=cache_dir, offline=offline,
        max_pixels=max_pixels,
    )  # fmt: skip


def edit(
    images: ImageInput | Sequence[ImageInput],
    *,
    mask: ImageInput | Sequence[ImageInput] | None = None,
    model: ModelArg = None,
    factor: int | None = None,
    steps: str | int | None = None,
    t_range: TRange = None,
    samples: int = 1,
    seed: int = 0,
    kernel: KernelName = "cubic",
    exact: bool = False,
    fit: FitPolicy = "none",
    method: Method = "ddpm",
    eta: float = 0.0,
    batch_size: int = 4,
    device: str = "auto",
    precision: Precision = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: TaskProgress | None = None,
) -> list[Image.Image]:
    """Images with scribbles -> realistic images that keep the edit (``ilvr edit``: N = 8, t = T .. 0.2 T).
    ``mask`` (white = may change, black = keep): one image for every input, or a list with one per input;
    outside it the result equals the input pixel for pixel. ``model=None``: ffhq."""
    return _run(
        "edit", images, model, mask=mask, progress=progress, factor=factor, steps=steps, t_range=t_range,
        samples=samples, seed=seed, kernel=kernel, exact=exact, fit=fit, method=method, eta=eta,
        batch_size=batch_size, device=device, precision=precision, cache_dir=cache_dir, offline=offline,
        max_pixels=max_pixels,
    )  # fmt: skip


def paint2img(
    images: ImageInput | Sequence[ImageInput],
    *,
    model: ModelArg = None,
    factor: int | None = None,
    steps: str | int | None = None,
    t_range: TRange = None,
    samples: int = 1,
    seed: int = 0,
    kernel: KernelName = "cubic",
    exact: bool = False,
    fit: FitPolicy = "none",
    method: Method = "ddpm",
    eta: float = 0.0,
    batch_size: int = 4,
    device: str = "auto",
    precision: Precision = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: TaskProgress | None = None,
) -> list[Image.Image]:
    """Paintings or flat-colour drawings -> photo-realistic images (``ilvr paint2img``: N = 32, conditioning
    t = T .. T/2, the narrowest range that keeps the semantics, Fig. 5). ``model=None``: church."""
    return _run(
        "paint2img", images, model, progress=progress, factor=factor, steps=steps, t_range=t_range,
        samples=samples, seed=seed, kernel=kernel, exact=exact, fit=fit, method=method, eta=eta,
        batch_size=batch_size, device=device, precision=precision, cache_dir=cache_dir, offline=offline,
        max_pixels=max_pixels,
    )  # fmt: skip


def sample(
    count: int = 8,
    *,
    model: ModelArg = None,
    steps: str | int | None = None,
    seed: int = 0,
    method: Method = "ddpm",
    eta: float = 0.0,
    batch_size: int = 4,
    device: str = "auto",
    precision: Precision = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    progress: TaskProgress | None = None,
) -> list[Image.Image]:
    """``count`` unconditional samples (``ilvr sample``: no reference, no hook); sample n has the noise key
    ``"sample/{n:06d}"``, as ``ilvr sample``'s ``{n:06d}.png``. ``model=None``: ffhq."""
    return _run(
        "sample", None, model, progress=progress, count=count, steps=steps, seed=seed, method=method,
        eta=eta, batch_size=batch_size, device=device, precision=precision, cache_dir=cache_dir,
        offline=offline,
    )  # fmt: skip
