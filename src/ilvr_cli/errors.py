"""User-facing errors.

Everything below ``cli/`` raises an :class:`IlvrError` subclass with a message a user can act on;
``cli/`` alone maps them to exit codes (see ``ilvr_cli.cli.exit_codes``). No module outside ``cli/``
prints or exits.
"""

from __future__ import annotations


class IlvrError(Exception):
    """Base class: a problem the user can fix; ``str(err)`` is one line that says what to do."""


class UsageError(IlvrError):
    """Bad options or arguments (unknown model name, factor that does not divide the size...)."""


class InputError(IlvrError):
    """An input file or folder cannot be used (missing, unreadable, wrong size)."""


class CheckpointError(IlvrError):
    """A checkpoint does not match the architecture it is loaded into, or has an unknown format."""


class ModelNotFoundError(UsageError):
    """A model name that is neither in the catalog nor a path to a checkpoint."""


class DownloadError(IlvrError):
    """A download failed on every source, or a file failed its integrity check."""


class OutputError(IlvrError):
    """Results cannot be written (disk full, read-only file system, no permission); what was written stays."""


class OfflineError(DownloadError):
    """A file is needed but ``ILVR_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) forbids the network."""
