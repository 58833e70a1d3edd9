"""Solvers: RED-diff and its comparison methods, each a frozen dataclass called as ``solver(prior, problem)``.

Every module of this package is imported here, so a solver defined in a new module registers itself in
:data:`SOLVERS` (by its ``name``; RED-diff first, then the others by name) without any table to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import SOLVERS, Problem, Sampler, Solver, StepInfo
from .ddim import DDIM
from .ddrm import DDRM
from .dps import DPS
from .pigdm import PiGDM
from .reddiff import RedDiff

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
_order = sorted(SOLVERS, key=lambda n: (n != "reddiff", n))  # RED-diff first, then the others by name
SOLVERS.update({n: SOLVERS.pop(n) for n in _order})

__all__ = ["Problem", "StepInfo", "Solver", "Sampler", "RedDiff", "DPS", "PiGDM", "DDRM", "DDIM", "SOLVERS"]
