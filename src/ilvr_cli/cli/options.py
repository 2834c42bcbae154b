"""Every option the commands share, declared once: the ``Annotated`` aliases, the choice enums (built from
the ``Literal`` choices of :mod:`ilvr_cli.tasks.config`) and the parameter list of the task commands.

The task commands (``upscale | translate | paint2img | edit | sample``) take the same options, so they are
listed once in :data:`TASK_PARAMETERS` and each command picks its own with :func:`task_parameters`;
:func:`with_parameters` gives a ``**options`` function that signature, which is what Typer reads.

Light on purpose: no torch, numpy or task library (``tasks.config`` imports neither).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ilvr_cli.tasks.config import FIT_POLICIES, KERNELS, METHODS, PRECISIONS


def choice_enum(name: str, values: Sequence[str]) -> type[Enum]:
    """A ``str`` enum whose members are ``values`` (member name = value): Typer shows and parses them as
    ``<a|b|c>`` choices."""
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


def choice_value(choice: Any) -> Any:
    """The plain value of a choice Typer parsed (an enum member), ``None`` or a plain value unchanged."""
    return choice.value if isinstance(choice, Enum) else choice


#: FID preprocessing modes: the choices of ``ilvr_cli.metrics.fid.MODES`` (not imported here: torch).
FID_MODES: tuple[str, ...] = ("legacy", "clean")

if TYPE_CHECKING:  # mypy cannot see the members of an enum built at runtime: check the values instead
    from ilvr_cli.tasks.config import FitPolicy as Fit
    from ilvr_cli.tasks.config import KernelName as Kernel
    from ilvr_cli.tasks.config import Method as Sampler
    from ilvr_cli.tasks.config import Precision

    FidMode = str
else:
    Kernel = choice_enum("Kernel", KERNELS)
    Fit = choice_enum("Fit", FIT_POLICIES)
    Precision = choice_enum("Precision", PRECISIONS)
    Sampler = choice_enum("Sampler", METHODS)
    FidMode = choice_enum("FidMode", FID_MODES)

# --------------------------------------------------------------------------------------------- shared
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Model cache root (default: $ILVR_CACHE_DIR, else the user cache dir).",
        file_okay=False,
        show_default=False,
    ),
]


def json_flag(help: str = "Print a machine-readable JSON summary on stdout.") -> Any:
    """The ``--json`` flag; ``help`` says what it replaces in this command's output."""
    return typer.Option("--json", help=help)


JsonOpt = Annotated[bool, json_flag()]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no summary table.")]


def max_megapixels_option(help: str = "Refuse larger inputs (decompression-bomb guard).") -> Any:
    """The ``--max-megapixels`` option (a float, in millions of pixels)."""
    return typer.Option("--max-megapixels", help=help)


#: The default of ``--max-megapixels`` (``ilvr_cli.io.load.DEFAULT_MAX_PIXELS`` / 1e6; not imported: numpy).
DEFAULT_MAX_MEGAPIXELS = 50.0

# --------------------------------------------------------------------------------------------- tasks
InputArg = Annotated[
    str, typer.Argument(help="An image, a folder of images (recursive) or a glob such as 'faces/*.png'.")
]
OutputArg = Annotated[
    Path | None,
    typer.Argument(
        help="Output folder (mirrors INPUT's relative paths). Default: '<input name>-<task>' beside INPUT.",
        show_default=False,
    ),
]
SampleOutputArg = Annotated[Path, typer.Argument(help="Output folder: 000000.png, 000001.png, ...")]
MODEL_HELP = "Catalog name (ilvr models list), checkpoint file or diffusers folder."


def complete_model_names(incomplete: str) -> list[str]:
    """Shell completion of a model: the catalog's names (built-in and added with ``ilvr models add``,
    from ``$ILVR_CACHE_DIR``), and for a path-like word the files and folders it starts."""
    import glob
    import os

    from ilvr_cli.registry.catalog import load_catalog
    from ilvr_cli.registry.resolve import looks_like_path

    if looks_like_path(incomplete):
        found = glob.glob(os.path.expanduser(incomplete) + "*")
        return sorted(p + os.sep if os.path.isdir(p) else p for p in found)
    try:
        names = [spec.name for spec in load_catalog()]
    except Exception:  # noqa: BLE001 - a broken user catalog must not break the shell
        return []
    return [name for name in names if name.startswith(incomplete)]


def model_option(help: str = MODEL_HELP) -> Any:
    """``--model`` / ``-m`` (a catalog name, a checkpoint file or a diffusers folder), completed from the
    catalog; ``help`` says what it defaults to where a command has a default."""
    return Annotated[
        str | None,
        typer.Option("--model", "-m", help=help, show_default=False, autocompletion=complete_model_names),
    ]


ModelOpt = model_option()
#: A catalog name argument (``ilvr models info NAME``), completed from the catalog.
CatalogNameArg = Annotated[str, typer.Argument(help="A catalog name.", autocompletion=complete_model_names)]
CatalogNamesArg = Annotated[
    list[str],
    typer.Argument(help="Catalog names.", show_default=False, autocompletion=complete_model_names),
]


def task_model_option(task: str) -> Any:
    """``--model`` with the task's default model named in its help."""
    from ilvr_cli.tasks.presets import preset

    return model_option(f"{MODEL_HELP} Default: {preset(task).default_model}.")


MaskOpt = Annotated[
    Path | None,
    typer.Option(
        "--mask",
        help="White = may change. One mask for every input, or a folder of masks mirroring INPUT.",
        show_default=False,
    ),
]
CountOpt = Annotated[int, typer.Option("--count", "-n", help="How many samples.")]
FactorOpt = Annotated[
    int | None,
    typer.Option(
        "--factor", "-N", help="Low-pass factor N: phi_N keeps an (S/N)x(S/N) thumbnail.", show_default=False
    ),
]
FilterOpt = Annotated[Kernel, typer.Option("--filter", help="Resampling kernel of phi_N (MATLAB imresize).")]
ExactOpt = Annotated[
    bool,
    typer.Option("--exact", help="Exact low-pass (pseudo-inverse up-sampler): down_N(result) = down_N(y)."),
]
StepsOpt = Annotated[
    str | None,
    typer.Option(
        "--steps",
        help="Respacing: '100' (default; the paper used 1000), 'ddim50', '10,10,10'.",
        show_default=False,
    ),
]
RangeOpt = Annotated[
    str | None,
    typer.Option(
        "--range",
        help="Conditioned part of the trajectory, T_START:T_STOP in the paper's time (e.g. 1000:200), or 'all'.",
        show_default=False,
    ),
]
SamplesOpt = Annotated[int, typer.Option("--samples", "-k", help="Results per reference (named NAME_k.png).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Run seed; each sample's noise comes from (seed, key).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Samples per network call.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda (cuda:N) or mps.")]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="The network's precision. auto: bf16 where the CPU or GPU computes it natively, else fp32; "
        "bf16 (CPU or CUDA), fp16 (CUDA), fp32.",
    ),
]
SamplerOpt = Annotated[Sampler, typer.Option("--sampler", help="DDPM ancestral steps, or DDIM.")]
EtaOpt = Annotated[float, typer.Option("--eta", help="DDIM noise (0 = deterministic given x_T).")]
FitOpt = Annotated[Fit, typer.Option("--fit", help="Bring other sizes to the model's: crop, resize or pad.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Redo outputs that exist (default: skip them).")
]
GridOpt = Annotated[
    bool, typer.Option("--grid", help="Contact sheet per batch: reference, phi_N(y), samples.")
]
AnimateOpt = Annotated[
    bool, typer.Option("--animate", help="Animated GIF of the predicted x_0 over the steps.")
]
MaxPixelsOpt = Annotated[float, max_megapixels_option()]


def _parameter(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


#: The options of the task commands, in ``--help`` order: (parameter name, option alias, default). A
#: command takes those it needs (:func:`task_parameters`); ``...`` is Typer's marker for a required option.
TASK_PARAMETERS: tuple[inspect.Parameter, ...] = (
    _parameter("input", InputArg),
    _parameter("output", OutputArg, None),
    _parameter("model", ModelOpt, None),
    _parameter("mask", MaskOpt, None),
    _parameter("count", CountOpt, 8),
    _parameter("factor", FactorOpt, None),
    _parameter("kernel", FilterOpt, "cubic"),
    _parameter("exact", ExactOpt, False),
    _parameter("steps", StepsOpt, None),
    _parameter("t_range", RangeOpt, None),
    _parameter("samples", SamplesOpt, 1),
    _parameter("seed", SeedOpt, 0),
    _parameter("batch_size", BatchOpt, 4),
    _parameter("device", DeviceOpt, "auto"),
    _parameter("precision", PrecisionOpt, "auto"),
    _parameter("method", SamplerOpt, "ddpm"),
    _parameter("eta", EtaOpt, 0.0),
    _parameter("fit", FitOpt, "none"),
    _parameter("overwrite", OverwriteOpt, False),
    _parameter("grid", GridOpt, False),
    _parameter("animate", AnimateOpt, False),
    _parameter("quiet", QuietOpt, False),
    _parameter("as_json", JsonOpt, False),
    _parameter("cache_dir", CacheDirOpt, None),
    _parameter("max_megapixels", MaxPixelsOpt, DEFAULT_MAX_MEGAPIXELS),
)

#: Options only some task commands take.
_ONLY = {"mask": "edit", "count": "sample"}
#: What ``sample`` (no reference image) does not take.
_NOT_SAMPLE = {"input", "factor", "kernel", "exact", "t_range", "samples", "fit", "max_megapixels"}


def task_parameters(task: str) -> list[inspect.Parameter]:
    """The parameters of one task command, from :data:`TASK_PARAMETERS`."""
    chosen = []
    for parameter in TASK_PARAMETERS:
        if _ONLY.get(parameter.name, task) != task:
            continue
        if task == "sample" and parameter.name in _NOT_SAMPLE:
            continue
        if parameter.name == "model":
            parameter = parameter.replace(annotation=task_model_option(task))
        if task == "sample" and parameter.name == "output":
            parameter = parameter.replace(annotation=SampleOutputArg, default=inspect.Parameter.empty)
        chosen.append(parameter)
    return chosen


F = TypeVar("F", bound=Callable[..., Any])


def with_parameters(parameters: Sequence[inspect.Parameter]) -> Callable[[F], F]:
    """Give a ``def command(**options)`` function the signature Typer reads its options from."""

    def decorate(command: F) -> F:
        command.__signature__ = inspect.Signature(list(parameters), return_annotation=None)  # type: ignore[attr-defined]
        return command

    return decorate


def examples(*command_lines: str) -> str:
    """A help epilog: a short "Examples" block, one command line per paragraph (Typer's rich help joins
    single lines, so each example is its own paragraph)."""
    return "[bold]Examples[/]\n\n" + "\n\n".join(command_lines)
