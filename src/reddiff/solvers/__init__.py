"""Solvers: RED-diff and its comparison methods, each a frozen dataclass called as ``solver(prior, problem)``."""

from __future__ import annotations

from .base import Problem, StepInfo
from .reddiff import RedDiff

#: solver name -> class, for the CLI and ``reddiff list solvers``.
SOLVERS: dict[str, type] = {"reddiff": RedDiff}

__all__ = ["Problem", "StepInfo", "RedDiff", "SOLVERS"]
