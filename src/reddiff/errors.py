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


class SolverError(ReddiffError):
    """A solver cannot run (operator lacks a capability) or diverged (NaN/Inf)."""
