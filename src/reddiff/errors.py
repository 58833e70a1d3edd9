"""Exception types shared across reddiff.

Every error that is the user's to fix (bad task string, wrong size, bad checkpoint, ...) is a
:class:`ReddiffError`, whose message is one line naming what was wrong and what is accepted. The CLI prints
that line and exits with code 2.
"""

from __future__ import annotations


class ReddiffError(ValueError):
    """A user-facing error: one line saying what was wrong and what is accepted."""


class CheckpointError(ReddiffError):
    """A checkpoint is missing, truncated, or does not match its architecture."""


class OperatorError(ReddiffError):
    """An unknown task, bad task parameter, or a measurement/mask of the wrong shape."""


class UserCodeError(OperatorError):
    """The user's own code (an operator or a prior loaded from their module) raised or returned something wrong
    while it was being used. The message names the code and what it did; the original exception is the cause."""


class SolverError(ReddiffError):
    """A solver cannot run (operator lacks a capability) or diverged (NaN/Inf)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, carrying what was kept and how to continue (one line, printed by the CLI).

    Args:
        message: what the interrupted command leaves behind and how to go on, e.g. "checkpoint saved at step 40;
            continue with --resume".
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message
