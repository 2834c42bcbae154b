"""Exit codes of the ``ilvr`` command, documented in docs/cli.md."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What ``ilvr`` returns to the shell."""

    OK = 0
    #: The command ran, but some inputs failed (each is named in a warning and in the summary).
    PARTIAL_FAILURE = 1
    #: Bad usage: unknown option value, unknown model, missing input, ... Nothing was computed.
    USAGE = 2
    #: A checkpoint or input could not be used (format, shape mismatch, corrupt file).
    BAD_INPUT = 3
    #: A download failed, or the network was needed while ``ILVR_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``).
    DOWNLOAD = 4
    #: Results could not be written (disk full, read-only, no permission); finished results are kept.
    OUTPUT = 5
    #: Any other error (a bug: please report it with the traceback from ``--debug``).
    INTERNAL = 70
    #: Interrupted by Ctrl-C (128 + SIGINT), as shells report it.
    INTERRUPTED = 130
