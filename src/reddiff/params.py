"""Declared parameters: a value's type, range or choices and help, written once and used everywhere.

A solver's hyperparameters (dataclass fields declared with :func:`hyper`) and a task's parameter (see
:mod:`reddiff.operators.registry`) carry a :class:`Range` or a tuple of choices. From that one declaration come the
validation (one style of message), the CLI flag with its ``--help`` text and parser, and the human description of
what is accepted ("a number P with 0 < P < 1").
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Range", "HyperParam", "hyper", "hyperparams", "check_value", "describe_kind", "parse_text"]


@dataclass(frozen=True, kw_only=True)
class Range:
    """An interval of numbers, optionally integers only (and odd), that can check and describe itself.

    Args:
        low: lower bound (None: unbounded).
        high: upper bound (None: unbounded).
        low_open: exclude ``low`` itself.
        high_open: exclude ``high`` itself.
        integer: integers only.
        odd: odd integers only.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    odd: bool = False

    def __call__(self, value: Any) -> bool:
        """Whether ``value`` lies in the range (a finite number of the right kind)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return not (self.odd and value % 2 != 1)

    def describe(self, symbol: str = "") -> str:
        """What is accepted, e.g. ``"a number P with 0 < P < 1"`` or ``"an integer >= 2"``."""
        kind = "an odd integer" if self.odd else "an integer" if self.integer else "a number"
        head = f"{kind} {symbol}".rstrip()
        low = None if self.low is None else f"{_num(self.low)} {'<' if self.low_open else '<='}"
        high = None if self.high is None else f"{'<' if self.high_open else '<='} {_num(self.high)}"
        if low and high:
            return f"{head} with {low} {symbol or 'it'} {high}"
        if low:
            op = ">" if self.low_open else ">="
            return f"{head} {op} {_num(self.low)}"
        if high:
            return f"{head} {high}"
        return head


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True)
class HyperParam:
    """One declared solver field: name, type, default, help, and what values are accepted.

    Attributes:
        name: the field name (``--name-with-dashes`` on the command line).
        kind: ``int``, ``float``, ``str``, ``bool``, ``floats`` (a tuple of floats), ``mapping`` (a JSON object).
        default: the default value.
        help: one line: what it does (the paper's meaning).
        choices: accepted values for ``str`` fields (None: any), in the order shown.
        range: accepted numbers for ``int``/``float`` fields (None: any finite number).
        optional: None is accepted too (and means what ``help`` says).
        length: the tuple length for ``floats``.
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    range: Range | None = None
    optional: bool = False
    length: int | None = None

    @property
    def flag(self) -> str:
        """The command-line flag, ``--name-with-dashes``."""
        return "--" + self.name.replace("_", "-")

    def accepted(self) -> str:
        """What is accepted, in words."""
        return describe_kind(self.kind, self.choices, self.range, self.optional, self.length)


def hyper(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    range: Range | None = None,
) -> Any:
    """A dataclass field of a solver, declaring its help text and accepted values once.

    Args:
        default: the default (a mutable default such as a dict is copied per instance).
        help: one line on what it does.
        choices: accepted strings, or a function returning them (for registries filled at import time).
        range: accepted numbers.

    Returns:
        A ``dataclasses.field`` whose metadata :func:`hyperparams` reads.
    """
    meta = {"help": help, "choices": choices, "range": range}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _kind_of(tp: Any) -> tuple[str, bool, int | None]:
    """(kind, optional, length) of a resolved type annotation."""
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else tp
        args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if tp in (int, float, str, bool):
        return tp.__name__, optional, None
    if origin is tuple and args and all(a is float for a in args):
        return "floats", optional, len(args)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        return "mapping", optional, None
    raise TypeError(f"unsupported hyperparameter type {tp!r}")


def hyperparams(cls: type) -> list[HyperParam]:
    """The declared hyperparameters of a dataclass, in field order (fields without ``hyper`` metadata skipped)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind, optional, length = _kind_of(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        choices = f.metadata["choices"]
        if callable(choices):
            choices = choices()
        out.append(HyperParam(f.name, kind, default, f.metadata["help"], tuple(choices) if choices else None,
                              f.metadata["range"], optional, length))
    return out


def describe_kind(kind: str, choices: tuple[str, ...] | None = None, rng: Range | None = None,
                  optional: bool = False, length: int | None = None) -> str:
    """What a parameter accepts, in words (the tail of every validation message)."""
    if choices:
        text = "one of " + ", ".join(choices)
    elif rng is not None:
        text = rng.describe()
    elif kind == "bool":
        text = "true or false"
    elif kind == "floats":
        text = f"{length} comma-separated numbers"
    elif kind == "mapping":
        text = "a JSON object of keyword arguments"
    elif kind == "int":
        text = "an integer"
    elif kind == "float":
        text = "a finite number"
    else:
        text = "a string"
    return f"{text} (or none)" if optional else text


def check_value(param: HyperParam, value: Any) -> Any:
    """``value`` normalised to the parameter's kind, or a ``ValueError`` saying what is accepted.

    Integers are accepted for float fields (and stay numbers); tuples are normalised from any sequence; mappings are
    copied into a dict.
    """
    bad = ValueError(f"{param.name} must be {param.accepted()}, got {value!r}")
    if value is None:
        if param.optional:
            return None
        raise bad
    kind = param.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind in ("int", "float"):
        ok_type = isinstance(value, int) if kind == "int" else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or not math.isfinite(value):
            raise bad
        if param.range is not None and not param.range(value):
            raise bad
        return value
    if kind == "str":
        if not isinstance(value, str) or (param.choices is not None and value not in param.choices):
            raise bad
        return value
    if kind == "floats":
        try:
            values = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise bad from None
        if len(values) != param.length or not all(math.isfinite(v) for v in values):
            raise bad
        return values
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise bad
    return dict(value)


def parse_text(param: HyperParam, text: str) -> Any:
    """Parse a command-line string into the parameter's kind (then :func:`check_value` it).

    ``none`` gives None for optional parameters; floats are comma-separated; mappings are JSON objects.
    """
    value: Any
    raw = text.strip()
    if param.optional and raw.lower() == "none":
        return None
    try:
        if param.kind == "int":
            value = int(raw)
        elif param.kind == "float":
            value = float(raw)
        elif param.kind == "bool":
            value = {"true": True, "false": False}[raw.lower()]
        elif param.kind == "floats":
            value = tuple(float(v) for v in raw.split(","))
        elif param.kind == "mapping":
            value = json.loads(raw)
        else:  # names are matched regardless of case on the command line
            value = next((c for c in param.choices or () if c.lower() == raw.lower()), raw)
    except (ValueError, KeyError):
        raise ValueError(f"must be {param.accepted()}, got {text!r}") from None
    try:
        return check_value(param, value)
    except ValueError:
        raise ValueError(f"must be {param.accepted()}, got {text!r}") from None
