"""The model catalog: data (``ilvr_cli/data/catalog.json`` plus the user's ``catalog.json`` in the cache).

An entry names a checkpoint, where to fetch it (sources tried in order), how to check it (sha256 or
size) and what it is (UNetConfig, DiffusionConfig, image size, parameter count). What several entries
share, their architecture, is written once as a family (``"families": {"adm-light": {...}}``) and an entry
naming that family holds only what differs; :func:`expand_family` merges the two before parsing. The
format is documented in docs/registry.md. This module reads and validates; it never touches the network
and never imports torch.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ilvr_cli.config import DiffusionConfig, UNetConfig
from ilvr_cli.errors import IlvrError, ModelNotFoundError, UsageError
from ilvr_cli.registry.cache import cache_root
from ilvr_cli.registry.names import NAME_RE as _NAME_RE
from ilvr_cli.registry.names import validate_name

__all__ = [
    "BUILTIN_CATALOG",
    "Catalog",
    "CatalogError",
    "FileSpec",
    "ModelSpec",
    "Source",
    "expand_family",
    "load_catalog",
    "validate_name",
]

#: The catalog shipped in the package (tests may point this elsewhere).
BUILTIN_CATALOG: Path = Path(str(resources.files("ilvr_cli") / "data" / "catalog.json"))
USER_CATALOG_NAME = "catalog.json"
CATALOG_VERSION = 1

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_GDRIVE_ID_RE = re.compile(r"[A-Za-z0-9_-]{10,100}")
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_SOURCE_KINDS = ("url", "gdrive", "path", "package")
_PACKAGE_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")

Kind = Literal["diffusion", "weights"]
Origin = Literal["builtin", "user"]


class CatalogError(IlvrError):
    """A catalog file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Source:
    """Where a file can come from: an https URL, a Google Drive file id, (user entries) a local path, or
    (built-in entries) ``package``: a file shipped inside ilvr-cli, relative to ``ilvr_cli/data``."""

    url: str | None = None
    gdrive: str | None = None
    path: str | None = None
    package: str | None = None

    @property
    def kind(self) -> str:
        if self.package:
            return "package"
        return "url" if self.url else "gdrive" if self.gdrive else "path"

    def package_path(self) -> Path | None:
        """The installed file of a ``package`` source (None for other kinds)."""
        if not self.package:
            return None
        return Path(str(resources.files("ilvr_cli").joinpath("data", *self.package.split("/"))))

    def describe(self) -> str:
        """A human-readable address: the URL, the Drive page, or the path."""
        if self.url:
            return self.url
        if self.gdrive:
            return f"https://drive.google.com/file/d/{self.gdrive}/view"
        if self.package:
            return f"built into ilvr-cli ({self.package_path()})"
        return str(self.path)

    def is_local(self) -> bool:
        """True for a local path or a URL on localhost (allowed only in entries the user added)."""
        if self.path:
            return True
        return bool(self.url) and urlsplit(self.url).hostname in LOCAL_HOSTS

    def to_dict(self) -> dict[str, str]:
        pairs = (("url", self.url), ("gdrive", self.gdrive), ("path", self.path), ("package", self.package))
        return {k: v for k, v in pairs if v}


@dataclass(frozen=True)
class FileSpec:
    """One file of an entry, stored as ``<cache>/models/<entry>/<name>``.

    ``fallback`` is fetched instead when every source of this file answers "not found" (e.g. a diffusers
    repository with ``.bin`` but no ``.safetensors`` weights).
    """

    name: str
    sources: tuple[Source, ...]
    sha256: str | None = None
    size: int | None = None
    approx_size: int | None = None
    fallback: FileSpec | None = None

    def alternatives(self) -> Iterator[FileSpec]:
        """This file, then its fallbacks in order."""
        spec: FileSpec | None = self
        while spec is not None:
            yield spec
            spec = spec.fallback

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        for key in ("size", "sha256", "approx_size"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        d["sources"] = [s.to_dict() for s in self.sources]
        if self.fallback is not None:
            d["fallback"] = self.fallback.to_dict()
        return d


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry. ``unet``/``diffusion`` are set for diffusion models (``kind == "diffusion"``)."""

    name: str
    kind: Kind
    family: str
    title: str
    format: str
    files: tuple[FileSpec, ...]
    image_size: int | None = None
    params: int | None = None
    unet: UNetConfig | None = None
    diffusion: DiffusionConfig | None = None
    flags: Mapping[str, Any] | None = None
    license: str = ""
    source_page: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    origin: Origin = "builtin"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def download_size(self) -> tuple[int | None, bool]:
        """(bytes, exact) summed over the files: exact when every size is published, else approximate
        (files without any size, like small JSON configs, count as 0); (None, False) if nothing is known."""
        sizes = [f.size if f.size is not None else f.approx_size for f in self.files]
        known = [s for s in sizes if s is not None]
        if not known:
            return None, False
        return sum(known), len(known) == len(sizes) and all(f.size is not None for f in self.files)

    @property
    def builtin_path(self) -> Path | None:
        """The installed file of an entry shipped inside ilvr-cli (one file with a ``package`` source)."""
        if len(self.files) == 1 and self.files[0].sources[0].package:
            return self.files[0].sources[0].package_path()
        return None

    def task_defaults(self, task: str) -> dict[str, Any]:
        """Suggested option values for ``task``: the top-level scalars, overridden by ``defaults[task]``."""
        merged = {k: v for k, v in self.defaults.items() if not isinstance(v, Mapping)}
        merged.update(self.defaults.get(task, {}))
        return merged


@dataclass(frozen=True)
class Catalog:
    """The merged catalog: built-in entries, then the user's (which win on a name clash)."""

    models: Mapping[str, ModelSpec]
    user_path: Path | None = None

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models.values())

    def names(self) -> list[str]:
        return list(self.models)

    def get(self, name: str) -> ModelSpec:
        """The entry called ``name``; an unknown name raises ModelNotFoundError with the closest names."""
        validate_name(name)
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFoundError(_not_found_message(name, self.names())) from None


def _not_found_message(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    close += [n for n in names if name.lower() in n.lower() and n not in close][: 3 - len(close)]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"unknown model {name!r}: {hint}`ilvr models list` shows the catalog; "
        "a checkpoint file or a diffusers folder is accepted too"
    )


# ---------------------------------------------------------------------------------------------- parsing


def _fail(where: str, message: str) -> CatalogError:
    return CatalogError(f"{where}: {message}")


def _parse_source(data: Any, where: str, origin: Origin) -> Source:
    if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in _SOURCE_KINDS:
        raise _fail(
            where,
            f"a source is one of {{'url': ...}}, {{'gdrive': ...}}, {{'path': ...}}, {{'package': ...}}, not {data!r}",
        )
    source = Source(**{k: str(v) for k, v in data.items()})
    if source.url:
        parts = urlsplit(source.url)
        local_http = parts.scheme == "http" and parts.hostname in LOCAL_HOSTS
        if parts.scheme != "https" and not (origin == "user" and local_http):
            raise _fail(where, f"{source.url}: only https URLs (or http://localhost in your own catalog)")
        if not parts.hostname:
            raise _fail(where, f"{source.url}: no host")
    elif source.gdrive and not _GDRIVE_ID_RE.fullmatch(source.gdrive):
        raise _fail(where, f"{source.gdrive!r} is not a Google Drive file id")
    elif source.path is not None and origin != "user":
        raise _fail(where, "local path sources are only allowed in your own catalog")
    elif source.package is not None:
        if origin != "builtin":
            raise _fail(where, "package sources are only allowed in the built-in catalog")
        if not _PACKAGE_RE.fullmatch(source.package) or ".." in source.package.split("/"):
            raise _fail(
                where, f"package source {source.package!r} must be a relative path under ilvr_cli/data"
            )
    return source


def _parse_file(data: Any, where: str, origin: Origin) -> FileSpec:
    if not isinstance(data, dict):
        raise _fail(where, "a file is an object with 'name' and 'sources'")
    unknown = set(data) - {"name", "sources", "sha256", "size", "approx_size", "fallback"}
    if unknown:
        raise _fail(where, f"unknown file keys {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise _fail(where, f"file name {name!r} must be a plain file name")
    where = f"{where} file {name}"
    sha = data.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha)):
        raise _fail(where, f"sha256 must be 64 lowercase hex digits, not {sha!r}")
    for key in ("size", "approx_size"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise _fail(where, f"{key} must be a byte count")
    sources = data.get("sources")
    if not isinstance(sources, list) or not sources:
        raise _fail(where, "needs at least one source")
    fallback = data.get("fallback")
    return FileSpec(
        name=name,
        sources=tuple(_parse_source(s, where, origin) for s in sources),
        sha256=sha,
        size=data.get("size"),
        approx_size=data.get("approx_size"),
        fallback=None if fallback is None else _parse_file(fallback, where + " fallback", origin),
    )


_ENTRY_KEYS = {
    "kind", "family", "title", "format", "image_size", "params", "flags", "unet", "diffusion", "files",
    "license", "source_page", "defaults", "notes", "added_from", "added_at",
}  # fmt: skip


def _model_configs(data: dict[str, Any], where: str) -> tuple[UNetConfig, DiffusionConfig]:
    """UNetConfig/DiffusionConfig from ``unet``/``diffusion`` dicts, else from guided-diffusion ``flags``."""
    flags = data.get("flags")
    if flags is not None and (not isinstance(flags, dict) or flags.get("class_cond")):
        raise _fail(where, "flags must be guided-diffusion keywords of an unconditional model")
    try:
        if "unet" in data:
            unet = UNetConfig.from_dict(data["unet"])
        elif flags is not None:
            unet = UNetConfig.from_guided_diffusion_flags(flags)
        else:
            raise _fail(where, "a diffusion model needs 'unet' or 'flags'")
        if "diffusion" in data:
            diffusion = DiffusionConfig.from_dict(data["diffusion"])
        elif flags is not None:
            diffusion = DiffusionConfig.from_guided_diffusion_flags(flags)
        else:
            raise _fail(where, "a diffusion model needs 'diffusion' or 'flags'")
    except CatalogError:
        raise
    except (IlvrError, TypeError, ValueError) as error:
        raise _fail(where, f"bad model config: {error}") from None
    return unet, diffusion


#: What a family may hold: an architecture (and its size), shared by the entries that name the family.
_FAMILY_KEYS = ("image_size", "params", "flags", "unet", "diffusion")
#: Family fields whose keys an entry overrides one by one (the other fields are replaced as a whole).
_MERGED_KEYS = ("flags", "unet", "diffusion")

Family = Mapping[str, Any]


def parse_families(data: Any, where: str) -> dict[str, Family]:
    """Validate a catalog file's ``families`` object: ``{name: {image_size, params, flags | unet, diffusion}}``."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _fail(where, "'families' must be an object {name: {flags | unet, diffusion, params, ...}}")
    families: dict[str, Family] = {}
    for name, family in data.items():
        family_where = f"{where} family {name!r}"
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
            raise _fail(family_where, "a family name is 1-64 letters, digits, '.', '_', '+' or '-'")
        if not isinstance(family, dict):
            raise _fail(family_where, "a family is an object")
        unknown = set(family) - set(_FAMILY_KEYS)
        if unknown:
            raise _fail(family_where, f"unknown keys {sorted(unknown)}; a family holds {list(_FAMILY_KEYS)}")
        for key in _MERGED_KEYS:
            if key in family and not isinstance(family[key], dict):
                raise _fail(family_where, f"{key!r} must be an object")
        families[name] = family
    return families


def expand_family(data: dict[str, Any], families: Mapping[str, Family], where: str) -> dict[str, Any]:
    """The entry ``data`` with its family's fields filled in (``where`` names the entry in errors).

    An entry whose ``family`` is defined in ``families`` starts from the family's fields; a field the entry
    gives replaces the family's, except ``flags``, ``unet`` and ``diffusion``, whose keys the entry
    overrides one by one (``"flags": {"dropout": 0.1}`` changes one flag). A ``family`` that is not defined
    is only a label (as in catalogs written before families existed), so such a diffusion entry must carry
    its own ``flags`` or ``unet``/``diffusion``; without them it is an error naming the family.
    """
    family_name = data.get("family")
    family = families.get(family_name) if isinstance(family_name, str) else None
    if family is None:
        if (
            family_name is not None
            and data.get("kind", "diffusion") == "diffusion"
            and not any(key in data for key in _MERGED_KEYS)
        ):
            close = difflib.get_close_matches(str(family_name), list(families), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            known = ", ".join(sorted(families)) or "none"
            raise _fail(
                where,
                f"family {family_name!r} is not defined{hint}; defined families: {known}. "
                "Name a defined family, or give the entry its own 'flags' or 'unet' and 'diffusion'",
            )
        return data
    merged = dict(family)
    for key, value in data.items():
        base = merged.get(key)
        if key in _MERGED_KEYS and isinstance(value, dict) and isinstance(base, Mapping):
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    return merged


def parse_entry(
    name: str,
    data: Any,
    *,
    origin: Origin = "builtin",
    where: str = "catalog",
    families: Mapping[str, Family] | None = None,
) -> ModelSpec:
    """Validate one entry (see docs/registry.md for the fields) and build its ModelSpec.

    ``families`` are those the entry may name (see :func:`expand_family`); ``raw`` keeps the expanded entry.
    """
    where = f"{where} entry {name!r}"
    try:
        validate_name(name)
    except UsageError as error:
        raise _fail(where, str(error)) from None
    if not isinstance(data, dict):
        raise _fail(where, "an entry is an object")
    unknown = set(data) - _ENTRY_KEYS
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}")
    data = expand_family(data, families or {}, where)
    kind = data.get("kind", "diffusion")
    if kind not in ("diffusion", "weights"):
        raise _fail(where, f"kind must be 'diffusion' or 'weights', not {kind!r}")
    files = data.get("files", [])
    if not isinstance(files, list) or (origin == "builtin" and not files):
        raise _fail(where, "'files' must be a non-empty list")
    file_specs = tuple(_parse_file(f, where, origin) for f in files)
    if len({f.name for f in file_specs}) != len(file_specs):
        raise _fail(where, "two files have the same name")
    unet = diffusion = None
    if kind == "diffusion":
        unet, diffusion = _model_configs(data, where)
        if data.get("image_size", unet.image_size) != unet.image_size:
            raise _fail(where, f"image_size {data['image_size']} differs from the UNet's {unet.image_size}")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise _fail(where, "defaults must be an object")
    return ModelSpec(
        name=name,
        kind=kind,
        family=str(data.get("family", "user" if origin == "user" else "")),
        title=str(data.get("title", "")),
        format=str(data.get("format", "")),
        files=file_specs,
        image_size=unet.image_size if unet else data.get("image_size"),
        params=data.get("params"),
        unet=unet,
        diffusion=diffusion,
        flags=data.get("flags"),
        license=str(data.get("license", "")),
        source_page=str(data.get("source_page", "")),
        defaults=defaults,
        notes=str(data.get("notes", "")),
        origin=origin,
        raw=data,
    )


def _read_catalog(
    path: Path, origin: Origin, inherited: Mapping[str, Family]
) -> tuple[dict[str, Family], dict[str, ModelSpec]]:
    """(the families visible to the file's entries, its entries) of one catalog file."""
    if origin == "user" and not path.exists():
        return dict(inherited), {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CatalogError(f"cannot read the model catalog {path}: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise CatalogError(f"{path}: a catalog is {{'version': 1, 'models': {{name: entry}}}}")
    if data.get("version", CATALOG_VERSION) != CATALOG_VERSION:
        raise CatalogError(f"{path}: catalog version {data.get('version')} is not {CATALOG_VERSION}")
    families = {**inherited, **parse_families(data.get("families"), str(path))}
    models = {
        n: parse_entry(n, e, origin=origin, where=str(path), families=families)
        for n, e in data["models"].items()
    }
    return families, models


def read_catalog_file(
    path: Path, origin: Origin, *, families: Mapping[str, Family] | None = None
) -> dict[str, ModelSpec]:
    """Parse one catalog file; a missing user catalog is empty. Its entries may name the families the
    file defines and ``families`` (a user catalog's own families win on a name clash)."""
    return _read_catalog(path, origin, families or {})[1]


def load_catalog(cache_dir: str | Path | None = None, *, builtin: Path | None = None) -> Catalog:
    """The built-in catalog merged with ``<cache root>/catalog.json`` (entries from ``ilvr models add``).

    Entries of the user's catalog may name the built-in families as well as the families it defines.
    """
    user_path = cache_root(cache_dir) / USER_CATALOG_NAME
    builtin_families, models = _read_catalog(builtin or BUILTIN_CATALOG, "builtin", {})
    models.update(_read_catalog(user_path, "user", builtin_families)[1])
    return Catalog(models=models, user_path=user_path)
