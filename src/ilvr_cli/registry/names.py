"""Model and file names: what may be used as ``<cache>/models/<name>`` (shared by the catalog and the cache)."""

from __future__ import annotations

import re

from ilvr_cli.errors import UsageError

__all__ = ["NAME_RE", "validate_name"]

# Always used with fullmatch: ``re.match`` with ``$`` would accept a trailing newline ("name\n").
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def validate_name(name: str) -> str:
    """Check that a model name is a safe folder name: letters, digits, ``. _ + -``; no separators, no ``..``.

    A name is used as ``<cache>/models/<name>``, so this is what keeps a name from writing outside the cache.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise UsageError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit, without '..' or path separators"
        )
    return name
