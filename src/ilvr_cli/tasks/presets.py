"""Task presets: the default low-pass factor N and conditioning range of each task, and why.

The paper's findings the defaults follow (Choi et al., ICCV 2021, Sec. 4 and Fig. 4/5):

- N sets what the result shares with the reference. phi_N keeps the content of a (H/N x W/N) thumbnail:
  a large N (64: a 4x4 thumbnail at 256 px) keeps only the colour scheme, a middle N (32) the mid-level
  semantics (pose, layout, the colour of large regions), a small N (8, 16) the details, so the samples
  barely vary. The reference code's examples: faces at N = 8 / 16, cat-to-dog translation at N = 32.
- The conditioning range sets how much of the trajectory is steered. Conditioning on every step makes
  down_N(result) match the reference; stopping early leaves the last steps to the model, so fine detail
  comes from the model's domain, not the reference's. Fig. 5: samples start to deviate from the reference
  when the conditioned range is narrower than steps 1000-500.

A preset range is stored as fractions of the model's T (1.0 = t = T), so a 4000-step model is steered over
the same part of its trajectory. The model's catalog entry may suggest other values (``defaults`` in the
catalog: ``factor``, ``range_t``, ``respacing``); an option given on the command line always wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from ilvr_cli.tasks.config import TaskName

#: The paper used 1000 steps; 100 respaced steps are the reference code's examples, a tenth of the work.
DEFAULT_STEPS = "100"


@dataclass(frozen=True)
class TaskPreset:
    """Defaults of one task. ``factor`` None: no conditioning (``sample``) or inferred (``upscale``)."""

    name: TaskName
    summary: str
    factor: int | None
    #: (start, stop) as fractions of T; None: no ILVR hook.
    range_fraction: tuple[float, float] | None
    reasoning: str
    #: The catalog model used when ``--model`` is not given (docs/tasks.md, "Default models").
    default_model: str = "ffhq"

    def t_range(self, num_timesteps: int) -> tuple[int, int] | None:
        """The preset range in the paper's time for a model trained with ``num_timesteps`` steps."""
        if self.range_fraction is None:
            return None
        start, stop = self.range_fraction
        return round(start * num_timesteps), round(stop * num_timesteps)


PRESETS: dict[str, TaskPreset] = {
    "upscale": TaskPreset(
        "upscale",
        "low-resolution images -> model-resolution images whose down_N matches the input",
        factor=8,
        range_fraction=(1.0, 0.0),
        reasoning=(
            "N is read from the input (model size / input size); model-size inputs are shrunk by N "
            "(default 8: small N keeps details). Every step is conditioned, the last included, so "
            "down_N(result) matches the input (exactly with --exact)."
        ),
    ),
    "translate": TaskPreset(
        "translate",
        "references from any domain -> images of the model's domain with the reference's layout",
        factor=32,
        range_fraction=(1.0, 0.2),
        reasoning=(
            "N = 32 keeps mid-level semantics (pose, layout, colours) and lets the model redraw the "
            "rest, as in the reference code's cat-to-dog example; the last 20% of the trajectory "
            "(its range_t = 20 of 100 steps) is left free so the details are the model's domain."
        ),
        default_model="afhq-dog",  # the paper's Table B: cats (AFHQ) to dogs
    ),
    "edit": TaskPreset(
        "edit",
        "images with scribbles -> realistic images that keep the edit",
        factor=8,
        range_fraction=(1.0, 0.2),
        reasoning=(
            "Scribbles are details, so a small N (8) keeps their colour and place; stopping at "
            "t = 0.2 T leaves the model the last steps to replace flat paint by realistic texture. "
            "With --mask only the masked region is regenerated."
        ),
    ),
    "paint2img": TaskPreset(
        "paint2img",
        "paintings or flat-colour drawings -> photo-realistic images",
        factor=32,
        range_fraction=(1.0, 0.5),
        reasoning=(
            "A painting shares colour layout and semantics with a photo, not texture: N = 32 keeps "
            "the layout, and conditioning only steps T..T/2 (the narrowest range that still keeps "
            "the reference's semantics, Fig. 5) frees the second half to paint photographic detail."
        ),
        # The paper's Places365 waterfall model was never published; LSUN church (Ho et al.'s DDPM) is the
        # published model of outdoor scenes: sky, trees, grass and buildings (docs/tasks.md).
        default_model="church",
    ),
    "sample": TaskPreset(
        "sample",
        "unconditional samples from the model (no reference, no hook)",
        factor=None,
        range_fraction=None,
        reasoning="Plain DDPM sampling: the first thing to run to see what a model produces.",
    ),
}


def preset(task: str) -> TaskPreset:
    """The preset of ``task``."""
    return PRESETS[task]
