"""The ``reddiff`` command line: one module per subcommand in this package, found at start-up.

A subcommand module defines ``NAME``, ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``,
and may define ``RANK`` (its place in ``--help``) and ``INTERRUPTED`` (what to say after Ctrl-C). Adding a
subcommand is adding a module; nothing else lists them.

Every subcommand is callable from Python as ``main(["solve", ...])`` and returns the exit code. A user error
(missing file, unknown task, bad number, incompatible checkpoint, ...) prints one line ``reddiff: error: ...`` to
stderr and returns 2 (``--debug`` prints the traceback too); nothing half-written is left on disk (every file is
written atomically, and the per-image ``run.json`` is written last). Ctrl-C returns 130, SIGTERM 143, each after one
line saying what was kept.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["main", "build_parser", "demo_image_path"]


def demo_image_path() -> Any:
    """The bundled held-out demo picture (256x256 centre crop of scikit-image's astronaut)."""
    from .demo import demo_image_path as path

    return path()


def _commands() -> list[ModuleType]:
    mods = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    mods = [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]
    return sorted(mods, key=lambda m: (getattr(m, "RANK", 100), m.NAME))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``reddiff`` command."""
    from .. import __version__
    from .common import Parser

    parser = Parser(prog="reddiff", description="Restore images and solve inverse problems with a diffusion prior "
                    "using RED-diff (Mardani et al., ICLR 2024).")
    parser.add_argument("--version", action="version", version=f"reddiff {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.DESCRIPTION)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, print the full traceback too")
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: unwind (temporary files are removed) and exit 143."""


def _stop_on_sigterm() -> Any:
    """Turn SIGTERM into an exception so an interrupted run unwinds cleanly (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``reddiff`` command with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    from ..errors import Interrupted, ReddiffError

    previous = _stop_on_sigterm()
    args: Any = None
    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 speaks for every rank
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(list(argv) if argv is not None else None)
        except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
            return int(exc.code or 0)
        if args.command is None:
            parser.print_help()
            return 0
        return int(args._module.run(args))
    except ReddiffError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        if not quiet:
            print(f"reddiff: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted) and exc.message:
            note = exc.message
        else:
            module = getattr(args, "_module", None)
            note = getattr(module, "INTERRUPTED", "nothing half-written was left behind")
        if not quiet:
            print(f"reddiff: interrupted: {_one_line(note)}", file=sys.stderr)
        terminated = any(isinstance(e, _Terminated) for e in (exc, exc.__cause__, exc.__context__))
        return 143 if terminated else 130
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)
