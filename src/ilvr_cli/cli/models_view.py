"""What the ``ilvr models`` commands show: table rows and the ``--json`` records of catalog entries.

Pure formatting of what the registry reports (:class:`~ilvr_cli.registry.catalog.ModelSpec`,
:class:`~ilvr_cli.registry.manage.ModelStatus`, :class:`~ilvr_cli.registry.manage.FileInfo`); no registry
work happens here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ilvr_cli.cli.progress import format_size

if TYPE_CHECKING:
    from ilvr_cli.registry.catalog import ModelSpec
    from ilvr_cli.registry.manage import FileCheck, FileInfo, ModelStatus


def size_text(spec: ModelSpec) -> str:
    size, exact = spec.download_size
    return "?" if size is None else ("" if exact else "~") + format_size(size)


def state_text(status: ModelStatus) -> str:
    """The cache state with rich markup, as ``models list`` / ``models info`` show it."""
    return {
        "builtin": "[green]built-in[/]",
        "ready": "[green]yes[/]",
        "downloaded": "[yellow]downloaded[/] (converts on first use)",
        "partial": f"[yellow]partial[/] ({format_size(status.bytes_on_disk)})",
        "missing": "no",
    }[status.state]


def flatten(defaults: Mapping[str, object], prefix: str = "") -> list[str]:
    """{"respacing": "100", "translate": {"factor": 32}} -> ["respacing=100", "translate.factor=32"]."""
    items: list[str] = []
    for key, value in defaults.items():
        if isinstance(value, dict):
            items += flatten(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={value}")
    return items


def entry_record(spec: ModelSpec, status: ModelStatus) -> dict[str, Any]:
    """One entry of ``ilvr models list --json``."""
    size, exact = spec.download_size
    return {
        "name": spec.name,
        "origin": spec.origin,
        "kind": spec.kind,
        "family": spec.family,
        "image_size": spec.image_size,
        "params": spec.params,
        "download_bytes": size,
        "download_bytes_exact": exact,
        "cached": status.state,
        "path": None if status.path is None else str(status.path),
    }


def info_record(spec: ModelSpec, status: ModelStatus, files: Sequence[FileInfo]) -> dict[str, Any]:
    """``ilvr models info --json``: the entry, its configs, its cache state and every file's sha256."""
    return {
        **entry_record(spec, status),
        "title": spec.title,
        "format": spec.format,
        "unet": None if spec.unet is None else spec.unet.to_dict(),
        "diffusion": None if spec.diffusion is None else spec.diffusion.to_dict(),
        "license": spec.license,
        "source_page": spec.source_page,
        "defaults": dict(spec.defaults),
        "notes": spec.notes,
        "folder": str(status.directory),
        "bytes_on_disk": status.bytes_on_disk,
        "files": [
            {
                "name": f.name,
                "sha256": f.sha256,
                "sha256_from": f.trust,
                "size": f.size,
                "approx_size": f.approx_size,
                "sources": [s.describe() for s in f.sources],
                "cached": f.cached is not None,
            }
            for f in files
        ],
    }


def info_rows(spec: ModelSpec, status: ModelStatus, files: Sequence[FileInfo]) -> list[tuple[str, str]]:
    """``ilvr models info``'s table: (key, value) rows; only the ``cached`` value carries markup."""
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
    rows += [("download", size_text(spec)), ("license", spec.license), ("source page", spec.source_page)]
    if spec.defaults:
        rows.append(("defaults", ", ".join(flatten(spec.defaults))))
    rows += [("cached", state_text(status)), ("folder", str(status.directory))]
    if status.path:
        rows.append(("path", str(status.path)))
    if status.bytes_on_disk:
        rows.append(("on disk", format_size(status.bytes_on_disk)))
    for f in files:
        size = format_size(f.size) if f.size is not None else "~" + format_size(f.approx_size)
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
    return rows


def verify_lines(checks: Sequence[FileCheck]) -> list[str]:
    """``models info --verify``: one line (rich markup) per rehashed file."""
    from rich.markup import escape

    lines = []
    for c in checks:
        detail = f" ({escape(c.detail)})" if c.detail else ""
        if c.outcome == "ok":
            lines.append(f"verify {escape(c.name)}: [green]ok[/]{detail}")
        elif c.outcome == "deleted":
            lines.append(f"verify {escape(c.name)}: [red]MISMATCH[/]{detail}: deleted")
        else:
            lines.append(
                f"verify {escape(c.name)}: [red]MISMATCH[/]{detail}: the file shipped with ilvr-cli is "
                "damaged and was left in place; reinstall ilvr-cli"
            )
    return lines


def verify_problem(spec: ModelSpec, checks: Sequence[FileCheck]) -> str | None:
    """The error a failed ``--verify`` reports (exit code 3), or None if every file matched."""
    bad = [c for c in checks if c.outcome != "ok"]
    if not bad:
        return None
    names = ", ".join(c.name for c in bad)
    if any(c.outcome == "damaged" for c in bad):
        return f"{spec.name}: {names} failed verification; reinstall ilvr-cli"
    one = len(bad) == 1
    return (
        f"{spec.name}: {names} failed verification and {'was' if one else 'were'} deleted; "
        f"run `ilvr models download {spec.name}` to fetch (or convert) {'it' if one else 'them'} again"
    )
