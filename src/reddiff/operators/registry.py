"""Task strings ``NAME[:PARAM]`` -> operators, and the registry every task adds itself to.

Each task is declared once, beside its operator class, as a keyword-only :class:`TaskSpec` (name, parameter type,
default, accepted range, one-line doc, builder) passed to :func:`register_task`; its description for
``reddiff list tasks`` is generated from those. :func:`parse_task` is the one parser of task strings (the CLI and
the presets use it too): a composite ``TASK+TASK+...`` applies its parts in order (see
:mod:`reddiff.operators.composite`), and ``path/to/file.py:function`` or ``module:function`` names a user operator
(see :mod:`reddiff.operators.user`).

``make_operator("sr:4", (3, 256, 256))`` builds the operator; its ``task`` attribute is the canonical string with
the default filled in (``make_operator("sr", ...).task == "sr:4"``).

Randomness (box position, random/free-form masks, motion kernels) comes from the ``generator`` argument; pass a
seeded ``torch.Generator`` for a reproducible operator. ``generator=None`` draws from torch's default generator
(reproducible only if the caller seeded it; the library never seeds globally).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import Operator
from reddiff.params import Range

__all__ = ["TASKS", "TaskSpec", "BuildContext", "TaskPart", "TaskString", "register_task", "task_specs",
           "make_operator", "parse_task", "x_shape_from_measurement"]


@dataclass(frozen=True)
class BuildContext:
    """What a task's builder gets besides its parameter.

    Attributes:
        shape: ``(C, H, W)`` of the images.
        generator: source of every random choice (may be None: torch's default generator).
        mask: an ``[H, W]`` mask given with ``mask=`` (only ``inpaint-mask`` takes one).
        task: the canonical task string for the operator's ``task`` attribute.
    """

    shape: tuple[int, int, int]
    generator: torch.Generator | None
    mask: Tensor | None
    task: str


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One built-in task, declared beside its operator class.

    Attributes:
        name: the task name (lower case), e.g. ``"inpaint-random"``.
        doc: what the task measures, one line; it may use ``symbol``.
        build: ``build(param, context) -> Operator``.
        param: the parameter's type, ``int``, ``float`` or ``str`` (a path), or None for a task without one.
        symbol: the parameter's name in the docs, e.g. ``"P"``.
        default: the parameter's default (None: required for ``str``, absent for parameterless tasks).
        check: the accepted numbers (None: any value of the type).
        x_from_y: ``(param, measurement image shape) -> (H, W)`` of the image, for measurements smaller or larger
            than the image (super-resolution, phase retrieval); None when the measurement image has the image's size.
    """

    name: str
    doc: str
    build: Callable[[Any, BuildContext], Operator]
    param: type | None = None
    symbol: str = ""
    default: Any = None
    check: Range | None = None
    x_from_y: Callable[[Any, tuple[int, int, int]], tuple[int, int]] | None = None

    def accepted(self) -> str:
        """The accepted parameter values, in words."""
        if self.param is str:
            return f"a file path {self.symbol}".rstrip()
        if self.check is not None:
            return self.check.describe(self.symbol)
        return f"{'an integer' if self.param is int else 'a number'} {self.symbol}".rstrip()

    def describe(self) -> str:
        """The one-line description shown by ``reddiff list tasks``."""
        if self.param is None:
            return self.doc
        default = f" (default {_fmt(self.default)})" if self.default is not None else ""
        return f"{self.doc}; {self.name}:{self.symbol or 'PARAM'}, {self.accepted()}{default}"

    def parse(self, raw: str, task: str) -> Any:
        """The parameter of ``task`` from its text ``raw``; a bad one is an :class:`OperatorError`."""
        if self.param is None:
            raise OperatorError(f"task {self.name!r} takes no parameter, got {task!r}")
        if self.param is str:
            if not raw:
                raise OperatorError(f"empty {self.symbol or 'parameter'} in {task!r}; use {self.name}:PATH")
            return raw
        text = raw.strip()
        try:
            value: Any = int(text) if self.param is int else float(text)
        except ValueError:
            value = None
        if value is None or (self.check is not None and not self.check(value)):
            raise OperatorError(f"bad parameter {text!r} in task {task!r}: {self.name} takes {self.accepted()}")
        return value


def _fmt(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


_SPECS: dict[str, TaskSpec] = {}
_LOADED = False


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a built-in task (called at import time by the module that defines its operator).

    Raises:
        OperatorError: a task of that name is registered already.
    """
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise OperatorError(f"task {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return spec


def task_specs() -> dict[str, TaskSpec]:
    """Every registered task, sorted by name (the operator modules of this package are imported once)."""
    global _LOADED
    if not _LOADED:
        package = Path(__file__).resolve().parent
        for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda m: m.name):
            importlib.import_module(f"reddiff.operators.{info.name}")
        ordered = dict(sorted(_SPECS.items()))
        _SPECS.clear()
        _SPECS.update(ordered)
        _LOADED = True
    return _SPECS


class _TaskTable(Mapping[str, str]):
    """Task name -> one-line description, filled from the registry on first use."""

    def __getitem__(self, name: str) -> str:
        return task_specs()[name].describe()

    def __iter__(self) -> Iterator[str]:
        return iter(task_specs())

    def __len__(self) -> int:
        return len(task_specs())

    def __repr__(self) -> str:
        return repr(dict(self))


TASKS: Mapping[str, str] = _TaskTable()
"""Task name -> one-line description (parameter and default), for ``reddiff list tasks``."""


# -- parsing ------------------------------------------------------------------------------------------------------
#: A ``+`` that starts a new task (not the exponent sign of a number such as ``1e+3``).
_COMPOSITE_SEP = re.compile(r"\+(?=\s*[A-Za-z_./~])")

_FORMS = "TASK+TASK (composite), path/to/file.py:function or module:function (user operator)"


@dataclass(frozen=True)
class TaskPart:
    """One part of a task string: a built-in task with its parameter, or a user operator.

    Attributes:
        name: the task name, or the user operator's ``SOURCE:FUNCTION``.
        param: the parameter (default filled in; None for tasks without one and for user operators).
        spec: the built-in task's spec (None for a user operator).
    """

    name: str
    param: Any
    spec: TaskSpec | None

    @property
    def canonical(self) -> str:
        """``NAME:PARAM`` with the default filled in (``NAME`` without a parameter; the spec for user operators)."""
        return self.name if self.param is None else f"{self.name}:{_fmt(self.param)}"


@dataclass(frozen=True)
class TaskString:
    """A parsed task string.

    Attributes:
        parts: the parts in the order they are applied.
    """

    parts: tuple[TaskPart, ...]

    @property
    def canonical(self) -> str:
        """The canonical task string (what ``operator.task`` holds)."""
        return "+".join(p.canonical for p in self.parts)

    @property
    def family(self) -> str:
        """The parameter-free name that presets are keyed by: ``"sr"``, ``"sr+inpaint-random"``, or a user spec."""
        return "+".join(p.name for p in self.parts)

    @property
    def composite(self) -> bool:
        """Whether the task has several parts."""
        return len(self.parts) > 1


def _split_composite(task: str) -> list[str]:
    parts = [p.strip() for p in _COMPOSITE_SEP.split(task.strip())]
    if len(parts) > 1 and not all(parts):
        raise OperatorError(f"empty part in composite task {task!r}; use TASK+TASK, e.g. sr:4+inpaint-random:0.5")
    return parts


def _parse_part(text: str) -> TaskPart:
    from reddiff.operators.user import is_user_spec

    specs = task_specs()
    if is_user_spec(text, tuple(specs)):
        return TaskPart(text.strip(), None, None)
    name, sep, raw = text.strip().partition(":")
    name = name.strip().lower()
    spec = specs.get(name)
    if spec is None:
        raise OperatorError(f"unknown task {name!r}; valid tasks: {', '.join(specs)}; also {_FORMS}")
    return TaskPart(name, spec.parse(raw, text) if sep else spec.default, spec)


def parse_task(task: str) -> TaskString:
    """Parse and validate a task string (``NAME[:PARAM]``, composites, user operators).

    Args:
        task: e.g. ``"sr:4"``, ``"inpaint-random:0.7"``, ``"denoise"``, ``"sr:4+inpaint-random:0.5"``,
            ``"my_ops.py:make"``.

    Returns:
        The parsed :class:`TaskString` (defaults filled in).

    Raises:
        OperatorError: unknown name, malformed or out-of-range parameter, a parameter for a task that takes none,
            or an empty composite part.
    """
    if not isinstance(task, str) or not task.strip():
        raise OperatorError(f"task must be a non-empty string NAME[:PARAM], got {task!r}; "
                            f"valid: {', '.join(task_specs())}")
    return TaskString(tuple(_parse_part(p) for p in _split_composite(task)))


def _check_shape(shape: Any) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 3 or any(d < 1 for d in dims):
        raise OperatorError(f"image shape must be (C, H, W) with positive sizes, got {shape!r}")
    return dims  # type: ignore[return-value]


def _build_part(part: TaskPart, shape: tuple[int, int, int], generator: torch.Generator | None,
                mask: Tensor | str | Path | None) -> Operator:
    from reddiff.operators.user import load_user_operator

    if part.spec is None:
        if mask is not None:
            raise OperatorError("mask= is only used by task inpaint-mask, not by a user operator")
        return load_user_operator(part.name, shape)
    param, mask_tensor = part.param, None
    if mask is not None:
        if part.name != "inpaint-mask":
            raise OperatorError(f"mask= is only used by task inpaint-mask, not {part.name!r}")
        if param is not None:
            raise OperatorError("give the mask either as inpaint-mask:PATH or as mask=, not both")
        if isinstance(mask, str | Path):
            param = str(mask)
        else:
            mask_tensor = torch.as_tensor(mask)
    canonical = TaskPart(part.name, param, part.spec).canonical
    return part.spec.build(param, BuildContext(shape, generator, mask_tensor, canonical))


def make_operator(
    task: str,
    shape: tuple[int, int, int],
    generator: torch.Generator | None = None,
    *,
    mask: Tensor | str | Path | None = None,
) -> Operator:
    """Build the operator for a task string.

    Args:
        task: ``NAME[:PARAM]``, one of :data:`TASKS` (e.g. ``"sr:4"``, ``"inpaint-random:0.7"``,
            ``"deblur-gauss:3.0"``, ``"jpeg:20"``); a composite ``TASK+TASK+...`` (applied in order: the second
            part acts on the first part's output, which must be an image; linear when every part is); or a user
            operator ``path/to/file.py:function`` / ``module:function`` (see
            :func:`reddiff.operators.user.load_user_operator`; a ``SOURCE:FUNCTION`` whose ``SOURCE`` is a built-in
            task name is the built-in task).
        shape: ``(C, H, W)`` of the images.
        generator: Source of every random choice (box position, random and free-form masks, motion kernel).
            ``None`` uses torch's default generator; pass a seeded generator for a reproducible operator.
        mask: Only for ``inpaint-mask``: an ``[H, W]`` tensor (nonzero = observed) or an image file path (white =
            observed), instead of ``inpaint-mask:PATH``.

    Returns:
        The operator (float64 buffers; it follows the dtype of its inputs), with ``task`` set to the canonical
        string, e.g. ``"sr:4"`` for ``"sr"``.

    Raises:
        OperatorError: Unknown task, bad parameter, parameter for a task without one, ``mask`` with another task,
            or a shape the task cannot handle (e.g. colorize needs 3 channels, sr needs a divisible size).
    """
    from reddiff.operators.composite import compose

    dims = _check_shape(shape)
    parsed = parse_task(task)
    if not parsed.composite:
        return _build_part(parsed.parts[0], dims, generator, mask)
    if mask is not None:
        raise OperatorError("mask= cannot be used with a composite task; use inpaint-mask:PATH as one of its parts")
    ops: list[Operator] = []
    current = dims
    for part in parsed.parts:
        if ops and len(current) != 3:
            raise OperatorError(
                f"in composite task {task!r}, {ops[-1].task!r} gives a measurement of shape "
                f"{list(ops[-1].y_shape)}, not an image, so it cannot be followed by {part.canonical!r}; put it last"
            )
        ops.append(_build_part(part, current, generator, None))
        current = tuple(ops[-1].y_shape)  # type: ignore[assignment]
    return compose(ops)


def x_shape_from_measurement(task: str, image_shape: tuple[int, int, int], channels: int = 3) -> tuple[int, int, int]:
    """The shape ``(C, H, W)`` of the unknown image for a measurement image of ``image_shape`` (as written by
    ``y_to_image`` / ``reddiff degrade``): e.g. a 64x64 ``sr:4`` measurement belongs to a 256x256 image.

    Composite tasks are inverted part by part, last part first.

    Args:
        task: the task string.
        image_shape: ``(C', H', W')`` of the measurement image.
        channels: channels of the unknown image (3 for RGB priors).

    Raises:
        OperatorError: For user operators (their image size cannot be inferred from a measurement) and for
            measurement sizes that no image size produces.
    """
    h, w = int(image_shape[-2]), int(image_shape[-1])
    for part in reversed(parse_task(task).parts):
        if part.spec is None:
            raise OperatorError(
                f"cannot infer the image size of user operator {part.name!r} from a measurement image; "
                "simulate with --input, or build the operator with make_operator(task, shape)"
            )
        if part.spec.x_from_y is not None:
            h, w = part.spec.x_from_y(part.param, (int(image_shape[0]), h, w))
    return (channels, h, w)
