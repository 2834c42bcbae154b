"""``ilvr models``: list, inspect, download, locate, remove and add models (see docs/registry.md).

Registered by the root app with ``app.add_typer(models_cmd.app, name="models")``. The registry is imported
inside the commands, and torch only by the registry when it converts or loads, so ``ilvr --help`` stays
light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ilvr_cli.cli import models_view as view
from ilvr_cli.cli.common import err, handle_errors, out
from ilvr_cli.cli.exit_codes import ExitCode
from ilvr_cli.cli.options import CacheDirOpt, CatalogNameArg, CatalogNamesArg, JsonOpt, QuietOpt, examples
from ilvr_cli.cli.progress import RichDownloadProgress, format_size
from ilvr_cli.cli.render import print_json
from ilvr_cli.errors import CheckpointError, UsageError

app = typer.Typer(
    name="models",
    help="List, download and manage models: the built-in catalog, your additions, and the cache.",
    no_args_is_help=True,
)


@app.command("list", epilog=examples("ilvr models list", "ilvr models list --json"))
@handle_errors
def list_models(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Show the catalog: name, family, resolution, parameters, download size, and whether it is cached."""
    from ilvr_cli.registry import cache_root, load_catalog, model_status

    entries = [(spec, model_status(spec, cache_dir)) for spec in load_catalog(cache_dir)]
    if as_json:
        print_json(
            {"cache": str(cache_root(cache_dir)), "models": [view.entry_record(s, st) for s, st in entries]}
        )
        return
    table = Table(title=f"Models (cache: {escape(str(cache_root(cache_dir)))})", title_justify="left")
    for column in ("name", "family", "resolution", "params", "size", "cached"):
        table.add_column(column, justify="right" if column in ("params", "size") else "left")
    for spec, status in entries:
        resolution = f"{spec.image_size}x{spec.image_size}" if spec.image_size else "-"
        params = f"{spec.params / 1e6:.1f}M" if spec.params else "-"
        name = spec.name + (" [dim](yours)[/]" if spec.origin == "user" else "")
        table.add_row(name, spec.family, resolution, params, view.size_text(spec), view.state_text(status))
    out.print(table)


@app.command(
    "info",
    epilog=examples("ilvr models info ffhq", "ilvr models info ffhq --verify  # rehash the cached files"),
)
@handle_errors
def info(
    name: CatalogNameArg,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Rehash the files now; a cached file that does not match is deleted, and any mismatch "
            "exits with code 3.",
        ),
    ] = False,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Everything the catalog and the cache know about one model, sha256 values included."""
    from ilvr_cli.registry import model_status, open_entry
    from ilvr_cli.registry.manage import check_files, file_infos

    spec = open_entry(name, cache_dir=cache_dir).spec
    assert spec is not None
    status, files = model_status(spec, cache_dir), file_infos(spec, cache_dir)
    checks = check_files(spec, cache_dir) if verify else []
    if as_json:
        record = view.info_record(spec, status, files)
        if verify:
            record["verify"] = [{"file": c.name, "outcome": c.outcome, "detail": c.detail} for c in checks]
        print_json(record)
    else:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in view.info_rows(spec, status, files):
            table.add_row(escape(key), value if key == "cached" else escape(value))
        out.print(table)
        if verify and not checks:
            out.print("verify: nothing of this model is in the cache")
        for line in view.verify_lines(checks):
            out.print(line)
    problem = view.verify_problem(spec, checks)
    if problem is not None:
        if as_json:  # the document above already says which files failed
            err.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
            raise typer.Exit(ExitCode.BAD_INPUT)
        raise CheckpointError(problem)


@app.command(
    "download",
    epilog=examples(
        "ilvr models download ffhq afhq-dog",
        "HF_TOKEN=hf_... ilvr models download church  # Hub token honoured",
    ),
)
@handle_errors
def download(
    names: CatalogNamesArg,
    no_convert: Annotated[
        bool, typer.Option("--no-convert", help="Only download; convert to safetensors on first use.")
    ] = False,
    keep_original: Annotated[
        bool, typer.Option("--keep-original", help="Keep the downloaded checkpoint after converting it.")
    ] = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download models into the cache (resumable, verified) and convert them to safetensors."""
    from ilvr_cli.registry import load_catalog, open_entry

    catalog = load_catalog(cache_dir)
    # every name is checked before anything is downloaded
    handles = [open_entry(n, cache_dir=cache_dir, catalog=catalog) for n in names]
    ready: dict[str, str] = {}
    with RichDownloadProgress(quiet) as progress:
        for handle in handles:
            path = handle.fetch(progress=progress, convert=not no_convert, keep_original=keep_original)
            ready[handle.name] = str(path)
            if not as_json:
                progress.note(f"{handle.name}: ready at {path}")
    if as_json:
        print_json({"ready": ready})


@app.command("path", epilog=examples("ilvr models path ffhq"))
@handle_errors
def path(name: CatalogNameArg, cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Print where a cached model is (the file that is loaded); fails if it is not in the cache."""
    from ilvr_cli.registry import model_status, open_entry

    spec = open_entry(name, cache_dir=cache_dir).spec
    assert spec is not None
    status = model_status(spec, cache_dir)
    if status.path is None:
        raise UsageError(
            f"{name} is not in the cache ({status.directory}); run `ilvr models download {name}`"
        )
    if as_json:
        print_json({"name": name, "path": str(status.path)})
    else:
        typer.echo(str(status.path))


@app.command(
    "rm",
    epilog=examples("ilvr models rm ffhq", "ilvr models rm mine --forget  # also drop an entry you added"),
)
@handle_errors
def rm(
    names: CatalogNamesArg,
    forget: Annotated[
        bool,
        typer.Option(
            "--forget",
            help="Also forget the sha256 recorded at first download (to accept a file the publisher "
            "replaced), and drop entries you added from your catalog.",
        ),
    ] = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete models from the cache (first-use sha256 records are kept, so a re-download is still checked,
    unless --forget)."""
    from ilvr_cli.registry import load_catalog, remove_model

    catalog = load_catalog(cache_dir)
    origins = {name: catalog.get(name).origin for name in names}  # every name is checked first
    freed: dict[str, int] = {}
    for name in names:
        freed[name] = remove_model(name, cache_dir, forget=forget)
        said = f"{escape(name)}: removed ({format_size(freed[name])} freed)"
        if forget:
            said += ", first-use sha256 records (if any) forgotten"
            said += ", entry dropped from your catalog" if origins[name] == "user" else ""
        if not (quiet or as_json):
            out.print(said)
    if as_json:
        print_json({"removed": freed, "forgot": forget})


@app.command(
    "add",
    epilog=examples(
        "ilvr models add mine runs/faces/ema.safetensors", "ilvr models add p2-ffhq ffhq_p2.pt --like ffhq"
    ),
)
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="The name to use with --model (letters, digits, . _ + -).")],
    source: Annotated[
        Path, typer.Argument(help="A checkpoint file (.pt, .safetensors) or a diffusers folder.", exists=True)
    ],
    like: Annotated[
        str | None, typer.Option("--like", help="Use the architecture and schedule of this catalog model.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help='JSON: {"unet": {...}, "diffusion": {...}} or guided-diffusion flags.',
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Add a checkpoint you obtained by hand (a Drive-only model, your own training run) to the cache."""
    from ilvr_cli.registry import add_model

    with RichDownloadProgress(quiet) as progress:
        resolved = add_model(name, source, like=like, config=config, cache_dir=cache_dir, progress=progress)
    if as_json:
        print_json({"name": name, "path": str(resolved.path)})
    elif not quiet:
        out.print(
            f"{escape(name)}: ready at {escape(str(resolved.path))}; use it with --model {escape(name)}"
        )


def register(root: typer.Typer) -> None:
    """Add the ``models`` group to the root app (``cli/app.py``)."""
    root.add_typer(app, name="models")
