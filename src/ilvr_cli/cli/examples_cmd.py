"""``ilvr examples [DEST]``: copy the example inputs shipped with ilvr-cli into a folder (see
:mod:`ilvr_cli.examples`).

Thin: the library copies and reports; this module prints one line per set on stdout (or ``--json``, or
nothing with ``--quiet``). Neither imports torch, numpy or PIL, so the command works on an install without
them. Registered by ``cli/app.py`` with :func:`register`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ilvr_cli.cli.common import handle_errors, out
from ilvr_cli.cli.options import JsonOpt, QuietOpt
from ilvr_cli.cli.options import examples as example_block

#: Where ``ilvr examples`` copies to without DEST.
DEFAULT_DESTINATION = Path("ilvr-examples")

DestArg = Annotated[
    Path,
    typer.Argument(
        help="Folder to copy into; each set goes to DEST/<set>/ (created if needed).",
        metavar="DEST",
        file_okay=False,
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace files in DEST that differ from the examples (default: refuse, exit 2)."
    ),
]


def _describe(counts: dict[str, int]) -> str:
    parts = [f"{n} {what}" for what, n in counts.items() if n]
    return ", ".join(parts) or "nothing to copy"


@handle_errors
def examples(
    dest: DestArg = DEFAULT_DESTINATION,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy the built-in example inputs (digits for the demo model) into DEST, one folder per set.

    digits/ holds ten 32x32 digits with their 8x8 (lr8/) and 4x4 (lr4/) thumbnails. Files already there with the same content are left alone, so running it again is harmless; a file with other content is never replaced without --overwrite (exit 2 instead).

    Then try: ilvr upscale DEST/digits/lr8 OUT --model demo --grid
    """

    from ilvr_cli.examples import copy_examples

    copied = copy_examples(dest, overwrite=overwrite)
    if as_json:
        data = {"destination": str(dest), "sets": [c.to_dict() for c in copied]}
        out.print(json.dumps(data, indent=2), markup=False, highlight=False, soft_wrap=True)
    elif not quiet:
        for c in copied:
            counts = {
                "written": len(c.written),
                "replaced": len(c.replaced),
                "already there": len(c.unchanged),
            }
            out.print(
                f"{escape(c.name)}: {c.files} files in {escape(str(c.folder))} ({_describe(counts)})",
                highlight=False,
                soft_wrap=True,
            )


def register(app: typer.Typer) -> None:
    """Add the ``examples`` command to the root app."""
    app.command("examples", epilog=EXAMPLES)(examples)


EXAMPLES = example_block(
    "ilvr examples /tmp/ilvr-examples  # then upscale its digits/lr8 folder",
    "ilvr examples --json  # into ./ilvr-examples; one record per set",
)
