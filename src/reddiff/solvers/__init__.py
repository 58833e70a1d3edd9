"""Solvers: RED-diff and its comparison methods, each a frozen dataclass called as ``solver(prior, problem)``."""

from __future__ import annotations

from .base import Problem, StepInfo
from .ddim import DDIM
from .ddrm import DDRM
from .dps import DPS
from .pigdm import PiGDM
from .reddiff import RedDiff

#: solver name -> class, for the CLI and ``reddiff list solvers``.
SOLVERS: dict[str, type] = {"reddiff": RedDiff, "dps": DPS, "pigdm": PiGDM, "ddrm": DDRM, "ddim": DDIM}

__all__ = ["Problem", "StepInfo", "RedDiff", "DPS", "PiGDM", "DDRM", "DDIM", "SOLVERS"]
