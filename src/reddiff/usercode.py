"""Loading the user's own code: ``path/to/file.py:function`` or ``package.module:function`` (user operators and
user priors). Every problem (missing file, syntax error, an exception while importing, no such function, not a
function) is one error naming the file or module and the function; no traceback of the user's code reaches the
terminal (it is the error's cause, shown with ``--debug``)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import ReddiffError

__all__ = ["split_user_spec", "is_user_spec", "load_factory"]

def split_user_spec(spec: str, what: str = "user code", error: type[ReddiffError] = ReddiffError) -> tuple[str, str]:
    """Split ``SOURCE:FUNCTION`` at its last colon (so Windows drive letters stay in the source)."""
    source, sep, func = spec.strip().rpartition(":")
    if not sep or not source or not func:
        raise error(f"{what} must be given as path/to/file.py:function or module:function, got {spec!r}")
    return source, func


def is_user_spec(spec: str, builtin_names: Sequence[str] = ()) -> bool:
    """Whether ``spec`` names a user operator rather than a built-in ``NAME[:PARAM]`` task.

    True for ``SOURCE:FUNCTION`` where ``SOURCE`` ends in ``.py``, or where ``SOURCE`` is a dotted module name that is
    not a built-in task name and ``FUNCTION`` is a Python identifier.
    """
    if not isinstance(spec, str) or ":" not in spec:
        return False
    source, _, func = spec.strip().rpartition(":")
    if source.lower().endswith(".py"):
        return True
    head = spec.strip().partition(":")[0].strip().lower()
    if head in builtin_names:
        return False
    return func.isidentifier() and all(part.isidentifier() for part in source.split("."))


def _load_module(source: str, where: str, what: str, error: type[ReddiffError]) -> Any:
    if source.lower().endswith(".py"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise error(f"{what} {where}: file {str(path)!r} not found")
        name = "reddiff_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise error(f"{what} {where}: cannot load {str(path)!r} as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            sys.modules.pop(name, None)
            raise error(f"{what} {where}: syntax error in {exc.filename} line {exc.lineno}: "
                                f"{exc.msg}") from None
        except Exception as exc:  # noqa: BLE001 - any error of user code becomes one clear message
            sys.modules.pop(name, None)
            raise error(f"{what} {where}: importing {str(path)!r} raised "
                                f"{type(exc).__name__}: {exc}") from None
        return module
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as exc:
        raise error(f"{what} {where}: module {source!r} cannot be imported ({exc}); give "
                            "path/to/file.py:function or an importable module:function") from None
    except SyntaxError as exc:
        raise error(f"{what} {where}: syntax error in {exc.filename} line {exc.lineno}: "
                            f"{exc.msg}") from None
    except Exception as exc:  # noqa: BLE001
        raise error(f"{what} {where}: importing module {source!r} raised "
                            f"{type(exc).__name__}: {exc}") from None


def load_factory(spec: str, what: str, error: type[ReddiffError]) -> tuple[Callable[..., Any], str, str]:
    """The function ``spec`` names, loaded from its file or module.

    Args:
        spec: ``SOURCE:FUNCTION``.
        what: the kind of code, for messages (``user operator``, ``user prior``).
        error: the error class to raise.

    Returns:
        ``(function, its name, the spec quoted for messages)``.
    """
    source, func_name = split_user_spec(spec, what, error)
    where = f"{spec.strip()!r}"
    module = _load_module(source, where, what, error)
    factory = getattr(module, func_name, None)
    if factory is None:
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise error(f"{what} {where}: {source!r} has no function {func_name!r}"
                    f"{' (it has: ' + ', '.join(public[:8]) + ')' if public else ''}")
    if not callable(factory):
        raise error(f"{what} {where}: {func_name!r} in {source!r} is a {type(factory).__name__}, not a function")
    return factory, func_name, where
