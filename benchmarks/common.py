"""What the benchmark scripts share: their results never replace an existing file unless ``--overwrite``.

The published results live in ``benchmarks/results/`` (tracked); a run that would replace one of them, or any other
existing file, stops before any work and says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """The ``--overwrite`` flag."""
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files")


def refuse_existing(args: argparse.Namespace, *paths: str | Path | None) -> None:
    """Exit with one line, before any work, when an output file exists and ``--overwrite`` was not given."""
    taken = [str(p) for p in paths if p is not None and Path(p).exists()]
    if taken and not args.overwrite:
        sys.exit(f"error: {', '.join(taken)} exists; pass --overwrite to replace it or choose another output path")
