"""``ilvr models``: list, inspect, download, locate, remove and add models (see docs/registry.md).

Registered by the root app with ``app.add_typer(models_cmd.app, name="models")``. The registry is imported
inside the commands, and torch only by the registry when it converts or loads, so ``ilvr --help`` stays
light.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ilvr_cli.cli.common import handle_errors, out
from ilvr_cli.cli.options import CacheDirOpt, CatalogNameArg, CatalogNamesArg
from ilvr_cli.cli.progress import RichDownloadProgress
from ilvr_cli.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from ilvr_cli.registry.catalog import ModelSpec
    from ilvr_cli.registry.manage import ModelStatus

app = typer.Typer(
    name="models",
    help="List, download and manage models: the built-in catalog, your additions, and the cache.",
    no_args_is_help=True,
)


def _size_text(spec: ModelSpec) -> str:
    from ilvr_cli.registry.download import format_bytes

    size, exact = spec.download_size
    return "?" if size is None else ("" if exact else "~") + format_bytes(size)


def _state_text(status: ModelStatus) -> str:
    from ilvr_cli.registry.download import format_bytes

    return {
        "builtin": "[green]built-in[/]",
        "ready": "[green]yes[/]",
        "downloaded": "[yellow]downloaded[/] (converts on first use)",
        "partial": f"[yellow]partial[/] ({format_bytes(status.bytes_on_disk)})",
        "missing": "no",
    }[status.state]


def _flatten(defaults: Mapping[str, object], prefix: str = "") -> list[str]:
    """{"respacing": "100", "translate": {"factor": 32}} -> ["respacing=100", "translate.factor=32"]."""
    items: list[str] = []
    for key, value in defaults.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={value}")
    return items


@app.command("list")
@handle_errors
def list_models(cache_dir: CacheDirOpt = None) -> None:
    """Show the catalog: name, family, resolution, parameters, download size, and whether it is cached."""
    from ilvr_cli.registry import cache_root, load_catalog, model_status

    table = Table(title=f"Models (cache: {escape(str(cache_root(cache_dir)))})", title_justify="left")
    for column in ("name", "family", "resolution", "params", "size", "cached"):
        table.add_column(column, justify="right" if column in ("params", "size") else "left")
    for spec in load_catalog(cache_dir):
        resolution = f"{spec.image_size}x{spec.image_size}" if spec.image_size else "-"
        params = f"{spec.params / 1e6:.1f}M" if spec.params else "-"
        name = spec.name + (" [dim](yours)[/]" if spec.origin == "user" else "")
        status = model_status(spec, cache_dir)
        table.add_row(name, spec.family, resolution, params, _size_text(spec), _state_text(status))
    out.print(table)


@app.command("info")
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
) -> None:
    """Everything the catalog and the cache know about one model, sha256 values included."""
    from ilvr_cli.registry import model_status, open_entry
    from ilvr_cli.registry.download import format_bytes
    from ilvr_cli.registry.manage import file_infos

    spec = open_entry(name, cache_dir=cache_dir).spec
    assert spec is not None
    status = model_status(spec, cache_dir)
    rows: list[tuple[str, str]] = [
        ("name", spec.name + (" (added by you)" if spec.origin == "user" else "")),
        ("title", spec.title),
        ("kind", spec.kind),
        ("family", spec.family),
        ("format", spec.format),
    ]
    if spec.image_size:
        rows.append(("resolution", f"{spec.image_size}x{spec.image_size}"))
    if spec.params:
        rows.append(("parameters", f"{spec.params:,}"))
    if spec.diffusion:
        d = spec.diffusion
        rows.append(
            ("diffusion", f"{d.schedule} schedule, {d.num_timesteps} steps, {d.variance_type} variance")
        )
    rows += [("download", _size_text(spec)), ("license", spec.license), ("source page", spec.source_page)]
    if spec.defaults:
        rows.append(("defaults", ", ".join(_flatten(spec.defaults))))
    rows += [("cached", _state_text(status)), ("folder", str(status.directory))]
    if status.path:
        rows.append(("path", str(status.path)))
    if status.bytes_on_disk:
        rows.append(("on disk", format_bytes(status.bytes_on_disk)))
    for f in file_infos(spec, cache_dir):
        size = format_bytes(f.size) if f.size is not None else "~" + format_bytes(f.approx_size)
        sha = {
            "published": f"{f.sha256} (published)",
            "first-use": f"{f.sha256} (recorded on first download)",
        }
        rows.append(
            (
                f"file {f.name}",
                f"{size}; sha256 {sha.get(f.trust, 'not published; recorded on first download')}",
            )
        )
        rows += [("  source", s.describe()) for s in f.sources]
    if spec.notes:
        rows.append(("notes", spec.notes))
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(escape(key), value if key == "cached" else escape(value))
    out.print(table)
    if verify:
        _verify(spec, cache_dir)


def _verify(spec: ModelSpec, cache_dir: Path | None) -> None:
    """Rehash an entry's cached files, one line each; any mismatch ends in a CheckpointError (exit 3)."""
    from ilvr_cli.registry.manage import check_files

    checks = check_files(spec, cache_dir)
    if not checks:
        out.print("verify: nothing of this model is in the cache")
    for c in checks:
        detail = f" ({escape(c.detail)})" if c.detail else ""
        if c.outcome == "ok":
            out.print(f"verify {escape(c.name)}: [green]ok[/]{detail}")
        elif c.outcome == "deleted":
            out.print(f"verify {escape(c.name)}: [red]MISMATCH[/]{detail}: deleted")
        else:
            out.print(f"verify {escape(c.name)}: [red]MISMATCH[/]{detail}: the file shipped with ilvr-cli is "
                      "damaged and was left in place; reinstall ilvr-cli")  # fmt: skip
    bad = [c for c in checks if c.outcome != "ok"]
    if not bad:
        return
    names = ", ".join(c.name for c in bad)
    if any(c.outcome == "damaged" for c in bad):
        raise CheckpointError(f"{spec.name}: {names} failed verification; reinstall ilvr-cli")
    raise CheckpointError(
        f"{spec.name}: {names} failed verification and {'was' if len(bad) == 1 else 'were'} deleted; "
        f"run `ilvr models download {spec.name}` to fetch (or convert) {'it' if len(bad) == 1 else 'them'} again"
    )


@app.command("download")
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
) -> None:
    """Download models into the cache (resumable, verified) and convert them to safetensors."""
    from ilvr_cli.registry import load_catalog, open_entry

    catalog = load_catalog(cache_dir)
    # every name is checked before anything is downloaded
    handles = [open_entry(n, cache_dir=cache_dir, catalog=catalog) for n in names]
    with RichDownloadProgress() as progress:
        for handle in handles:
            path = handle.fetch(progress=progress, convert=not no_convert, keep_original=keep_original)
            progress.note(f"{handle.name}: ready at {path}")


@app.command("path")
@handle_errors
def path(name: CatalogNameArg, cache_dir: CacheDirOpt = None) -> None:
    """Print where a cached model is (the file that is loaded); fails if it is not in the cache."""
    from ilvr_cli.registry import model_status, open_entry

    spec = open_entry(name, cache_dir=cache_dir).spec
    assert spec is not None
    status = model_status(spec, cache_dir)
    if status.path is None:
        raise UsageError(
            f"{name} is not in the cache ({status.directory}); run `ilvr models download {name}`"
        )
    typer.echo(str(status.path))


@app.command("rm")
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
) -> None:
    """Delete models from the cache (first-use sha256 records are kept, so a re-download is still checked,
    unless --forget)."""
    from ilvr_cli.registry import load_catalog, remove_model
    from ilvr_cli.registry.download import format_bytes

    catalog = load_catalog(cache_dir)
    origins = {name: catalog.get(name).origin for name in names}  # every name is checked first
    for name in names:
        freed = remove_model(name, cache_dir, forget=forget)
        said = f"{escape(name)}: removed ({format_bytes(freed)} freed)"
        if forget:
            said += ", first-use sha256 records (if any) forgotten"
            said += ", entry dropped from your catalog" if origins[name] == "user" else ""
        out.print(said)


@app.command("add")
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
) -> None:
    """Add a checkpoint you obtained by hand (a Drive-only model, your own training run) to the cache."""
    from ilvr_cli.registry import add_model

    with RichDownloadProgress() as progress:
        resolved = add_model(name, source, like=like, config=config, cache_dir=cache_dir, progress=progress)
    out.print(f"{escape(name)}: ready at {escape(str(resolved.path))}; use it with --model {escape(name)}")


def register(root: typer.Typer) -> None:
    """Add the ``models`` group to the root app (``cli/app.py``)."""
    root.add_typer(app, name="models")
