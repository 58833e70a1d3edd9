"""What the benchmark scripts share: their results never replace an existing file unless ``--overwrite``.

The published results live in ``benchmarks/results/`` (tracked); a run that would replace one of them, or any other
existing file, stops before any work and says so.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

#: a sweep's pick other than the current setting must beat every candidate nearer it by more than this (mean dB over
#: the crops): three crops cannot tell smaller differences apart (a 0.05 dB gain at λ/64 lost 0.33 dB held out)
MARGIN_DB = 0.1


def pick_factor(scores: dict[float, float], margin_db: float = MARGIN_DB) -> float:
    """The multiplier of a setting to use, from mean scores by multiplier (1 = the current setting): the best one,
    unless one nearer 1 (on a log scale) comes within ``margin_db`` of it."""
    best = max(scores.values())
    return min((f for f, v in scores.items() if v >= best - margin_db), key=lambda f: abs(math.log(f)))


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """The ``--overwrite`` flag."""
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files")


def refuse_existing(args: argparse.Namespace, *paths: str | Path | None) -> None:
    """Exit with one line, before any work, when an output file exists and ``--overwrite`` was not given."""
    taken = [str(p) for p in paths if p is not None and Path(p).exists()]
    if taken and not args.overwrite:
        sys.exit(f"error: {', '.join(taken)} exists; pass --overwrite to replace it or choose another output path")
