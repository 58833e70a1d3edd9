"""Task strings ``NAME[:PARAM]`` -> operators.

Composites ``TASK+TASK+...`` apply the tasks in order (the second acts on the first's output, and so on; see
:mod:`reddiff.operators.composite`). A user operator is named ``path/to/file.py:function`` or ``module:function``
(see :mod:`reddiff.operators.user`).

``make_operator("sr:4", (3, 256, 256))`` builds the operator; ``TASKS`` maps every task name to a one-line
description (parameter and default). The operator's ``task`` attribute is the canonical string with the default
filled in, e.g. ``make_operator("sr", ...)`` has ``task == "sr:4"``.

Randomness (box position, random/free-form masks, motion kernels) comes from the ``generator`` argument; pass a
seeded ``torch.Generator`` for a reproducible operator. ``generator=None`` draws from torch's default generator
(reproducible only if the caller seeded it; the library never seeds globally).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import Operator
from reddiff.operators.blur import Convolution2D, SeparableBlur, gaussian_kernel_1d, motion_kernel, uniform_kernel_1d
from reddiff.operators.color import Colorization
from reddiff.operators.composite import compose
from reddiff.operators.cs import CompressedSensing
from reddiff.operators.denoise import Identity
from reddiff.operators.inpainting import (
    Inpainting,
    box_mask,
    center_mask,
    freeform_mask,
    half_mask,
    load_mask,
    random_mask,
)
from reddiff.operators.jpeg import JPEG
from reddiff.operators.phase import PhaseRetrieval, phase_side_from_padded
from reddiff.operators.pointwise import HDR, Quantize
from reddiff.operators.resampling import Bicubic, BlockAverage
from reddiff.operators.user import is_user_spec, load_user_operator

__all__ = ["TASKS", "make_operator", "parse_task", "split_composite", "x_shape_from_measurement"]

GAUSS_KERNEL_SIZE = 61
MOTION_KERNEL_SIZE = 61

_Builder = Callable[[Any, tuple[int, int, int], "torch.Generator | None", "Tensor | None", str], Operator]


@dataclass(frozen=True)
class _Spec:
    description: str
    kind: str  # "none", "int", "float", "path"
    default: Any = None
    accepted: str = ""
    valid: Callable[[Any], bool] = lambda _v: True
    build: _Builder | None = None
    #: (param, measurement image shape) -> image shape x; None: the measurement image has x's size.
    x_from_y: Callable[[Any, tuple[int, int, int]], tuple[int, int]] | None = None


def _fmt(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _inpaint(mask: Tensor, shape: tuple[int, int, int], task: str, extra: dict[str, Any] | None = None) -> Operator:
    return Inpainting(mask, channels=shape[0], task=task, extra_params=extra)


def _build_box(_p: Any, shape: tuple[int, int, int], g: torch.Generator | None, _m: Any, task: str) -> Operator:
    mask, box = box_mask(shape, g)
    return _inpaint(mask, shape, task, {"box": box})


def _build_mask(p: Any, shape: tuple[int, int, int], _g: Any, m: Tensor | None, task: str) -> Operator:
    mask = load_mask(p, shape) if p is not None else m
    if mask is None:
        raise OperatorError("inpaint-mask needs a mask: use inpaint-mask:PATH or pass mask=")
    mask = torch.as_tensor(mask)
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2 or tuple(mask.shape) != shape[1:]:
        got = "x".join(map(str, mask.shape))
        raise OperatorError(f"mask is {got} but the image is {shape[1]}x{shape[2]}")
    return _inpaint(mask, shape, task, {"mask_file": str(p)} if p is not None else None)


def _sigma_blur(p: float, shape: tuple[int, int, int], _g: Any, _m: Any, task: str) -> Operator:
    return SeparableBlur(gaussian_kernel_1d(GAUSS_KERNEL_SIZE, p), shape, task, {"sigma": p, "kernel": "gaussian"})


def _uniform_blur(p: int, shape: tuple[int, int, int], _g: Any, _m: Any, task: str) -> Operator:
    return SeparableBlur(uniform_kernel_1d(p), shape, task, {"kernel": "uniform"})


def _motion_blur(p: float, shape: tuple[int, int, int], g: torch.Generator | None, _m: Any, task: str) -> Operator:
    kernel = motion_kernel(MOTION_KERNEL_SIZE, p, g)
    return Convolution2D(kernel, shape, task, {"intensity": p, "kernel": "motion"})


def _colorize(_p: Any, shape: tuple[int, int, int], _g: Any, _m: Any, task: str) -> Operator:
    if shape[0] != 3:
        raise OperatorError(f"colorize needs 3-channel images, got {shape[0]} channel(s)")
    return Colorization(shape, task)


def _resample(cls: type) -> _Builder:
    def build(p: int, shape: tuple[int, int, int], _g: Any, _m: Any, task: str) -> Operator:
        return cls(p, shape, task)

    return build


def _upscale(factor: int, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    return image_shape[1] * factor, image_shape[2] * factor


def _finite(lo: float, hi: float, lo_open: bool = True, hi_open: bool = True) -> Callable[[Any], bool]:
    def ok(v: float) -> bool:
        if not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return ok


def _phase(p: float, shape: tuple[int, int, int], g: torch.Generator | None, _m: Any, task: str) -> Operator:
    return PhaseRetrieval(shape, p, g, task)


def _phase_x_from_y(p: float, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    return phase_side_from_padded(image_shape[1], p), phase_side_from_padded(image_shape[2], p)


def _jpeg(p: int, shape: tuple[int, int, int], _g: Any, _m: Any, task: str) -> Operator:
    if shape[0] not in (1, 3):
        raise OperatorError(f"jpeg needs 1- or 3-channel images, got {shape[0]} channel(s)")
    return JPEG(shape, p, task)


_SPECS: dict[str, _Spec] = {
    "denoise": _Spec("denoising: A = identity", "none", build=lambda _p, s, _g, _m, t: Identity(s, t)),
    "inpaint-box": _Spec(
        "inpainting: an H/2 x W/2 box missing at a random place, H/16 margin (128x128, 16 px for 256x256)",
        "none",
        build=_build_box,
    ),
    "inpaint-center": _Spec(
        "inpainting: the centred H/2 x W/2 box missing",
        "none",
        build=lambda _p, s, _g, _m, t: _inpaint(center_mask(s), s, t),
    ),
    "inpaint-half": _Spec(
        "inpainting: the right half of the image missing",
        "none",
        build=lambda _p, s, _g, _m, t: _inpaint(half_mask(s), s, t),
    ),
    "inpaint-random": _Spec(
        "inpainting: a fraction P of the pixels missing at random, inpaint-random:P with 0 < P < 1 (default 0.8)",
        "float",
        0.8,
        "a number P with 0 < P < 1",
        _finite(0.0, 1.0),
        lambda p, s, g, _m, t: _inpaint(random_mask(s, p, g), s, t, {"fraction": p}),
    ),
    "inpaint-freeform": _Spec(
        "inpainting: random free-form brush strokes, 20-30% of the pixels missing",
        "none",
        build=lambda _p, s, g, _m, t: _inpaint(freeform_mask(s, g), s, t),
    ),
    "inpaint-mask": _Spec(
        "inpainting with your mask, inpaint-mask:PATH (image file, white = observed, black = missing) or mask=",
        "path",
        build=_build_mask,
    ),
    "sr": _Spec(
        "super-resolution: F x F block averaging, sr:F with integer F >= 2 (default 4)",
        "int",
        4,
        "an integer factor >= 2",
        lambda v: v >= 2,
        _resample(BlockAverage),
        _upscale,
    ),
    "bicubic": _Spec(
        "super-resolution: antialiased bicubic downsampling, bicubic:F with integer F >= 2 (default 4)",
        "int",
        4,
        "an integer factor >= 2",
        lambda v: v >= 2,
        _resample(Bicubic),
        _upscale,
    ),
    "deblur-gauss": _Spec(
        "deblurring: 61x61 Gaussian blur, deblur-gauss:SIGMA in pixels (default 3.0)",
        "float",
        3.0,
        "a number SIGMA > 0 (pixels)",
        _finite(0.0, math.inf),
        _sigma_blur,
    ),
    "deblur-uniform": _Spec(
        "deblurring: K x K uniform (box) blur, deblur-uniform:K with odd K >= 1 (default 9)",
        "int",
        9,
        "an odd integer K >= 1",
        lambda v: v >= 1 and v % 2 == 1,
        _uniform_blur,
    ),
    "deblur-motion": _Spec(
        "deblurring: 61x61 random camera-shake kernel, deblur-motion:INTENSITY in [0, 1] (default 0.5)",
        "float",
        0.5,
        "a number INTENSITY with 0 <= INTENSITY <= 1",
        _finite(0.0, 1.0, lo_open=False, hi_open=False),
        _motion_blur,
    ),
    "colorize": _Spec("colorization: y = mean of the 3 colour channels", "none", build=_colorize),
    "phase-retrieval": _Spec(
        "phase retrieval: per-channel |FFT2| of the image zero-padded to OVERSAMPLE x its side, "
        "phase-retrieval:OVERSAMPLE >= 1 (default 2.0: 1/4 of the side padded on every side)",
        "float",
        2.0,
        "a number OVERSAMPLE >= 1",
        _finite(1.0, math.inf, lo_open=False),
        _phase,
        _phase_x_from_y,
    ),
    "hdr": _Spec(
        "high dynamic range: y = clip(FACTOR x, -1, 1), hdr:FACTOR > 0 (default 2.0)",
        "float",
        2.0,
        "a number FACTOR > 0",
        _finite(0.0, math.inf),
        lambda p, s, _g, _m, t: HDR(s, p, t),
    ),
    "jpeg": _Spec(
        "JPEG encode-decode (YCbCr 4:2:0, IJG tables, straight-through rounding), jpeg:Q with integer "
        "1 <= Q <= 100 (default 75)",
        "int",
        75,
        "an integer quality Q with 1 <= Q <= 100",
        lambda v: 1 <= v <= 100,
        _jpeg,
    ),
    "quantize": _Spec(
        "uniform quantisation to 2^BITS levels over [-1, 1] (straight-through rounding), quantize:BITS with "
        "integer 1 <= BITS <= 16 (default 4)",
        "int",
        4,
        "an integer BITS with 1 <= BITS <= 16",
        lambda v: 1 <= v <= 16,
        lambda p, s, _g, _m, t: Quantize(s, p, t),
    ),
    "cs": _Spec(
        "compressed sensing: a fraction RATIO of the coefficients of a random orthonormal transform (permutation, "
        "signs, 2-D DCT), cs:RATIO with 0 < RATIO <= 1 (default 0.25)",
        "float",
        0.25,
        "a number RATIO with 0 < RATIO <= 1",
        _finite(0.0, 1.0, hi_open=False),
        lambda p, s, g, _m, t: CompressedSensing(s, p, g, t),
    ),
}

TASKS: dict[str, str] = {name: spec.description for name, spec in _SPECS.items()}
"""Task name -> one-line description (parameter and default), for ``reddiff list tasks``."""


#: A ``+`` that starts a new task (not the exponent sign of a number such as ``1e+3``).
_COMPOSITE_SEP = re.compile(r"\+(?=\s*[A-Za-z_./~])")

_FORMS = "TASK+TASK (composite), path/to/file.py:function or module:function (user operator)"


def split_composite(task: str) -> list[str]:
    """Split a composite task ``TASK+TASK+...`` into its parts (a single task gives a list of one).

    Raises:
        OperatorError: If a part is empty (e.g. ``"sr:4+"``).
    """
    parts = [p.strip() for p in _COMPOSITE_SEP.split(task.strip())]
    if len(parts) > 1 and not all(parts):
        raise OperatorError(f"empty part in composite task {task!r}; use TASK+TASK, e.g. sr:4+inpaint-random:0.5")
    return parts


def parse_task(task: str) -> tuple[str, Any]:
    """Split and validate ``NAME[:PARAM]``.

    Args:
        task: Task string, e.g. ``"sr:4"``, ``"inpaint-random:0.7"``, ``"denoise"``.

    Returns:
        ``(name, param)`` with the parameter converted to its type and the default filled in (``None`` for tasks
        without a parameter and for ``inpaint-mask`` without a path).

    Raises:
        OperatorError: Unknown name, malformed or out-of-range parameter, or a parameter for a task that takes none.
    """
    if not isinstance(task, str) or not task.strip():
        raise OperatorError(f"task must be a non-empty string NAME[:PARAM], got {task!r}; valid: {', '.join(_SPECS)}")
    if len(split_composite(task)) > 1:
        raise OperatorError(f"{task!r} is a composite task; parse its parts (split_composite) one by one")
    name, sep, raw = task.strip().partition(":")
    name = name.strip().lower()
    spec = _SPECS.get(name)
    if spec is None:
        raise OperatorError(f"unknown task {name!r}; valid tasks: {', '.join(_SPECS)}; also {_FORMS}")
    if not sep:
        return name, spec.default
    if spec.kind == "none":
        raise OperatorError(f"task {name!r} takes no parameter, got {task!r}")
    if spec.kind == "path":
        if not raw:
            raise OperatorError(f"empty mask path in {task!r}; use inpaint-mask:PATH")
        return name, raw
    raw = raw.strip()
    try:
        value: Any = int(raw) if spec.kind == "int" else float(raw)
    except ValueError:
        value = None
    if value is None or not spec.valid(value):
        raise OperatorError(f"bad parameter {raw!r} in task {task!r}: {name} takes {spec.accepted}")
    return name, value


def _check_shape(shape: Any) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 3 or any(d < 1 for d in dims):
        raise OperatorError(f"image shape must be (C, H, W) with positive sizes, got {shape!r}")
    return dims  # type: ignore[return-value]


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
    if not isinstance(task, str) or not task.strip():
        parse_task(task)  # raises the standard message
    parts = split_composite(task)
    dims = _check_shape(shape)
    if len(parts) > 1:
        if mask is not None:
            raise OperatorError("mask= cannot be combined with a composite task; use inpaint-mask:PATH as its part")
        ops: list[Operator] = []
        current = dims
        for i, part in enumerate(parts):
            if i > 0 and len(ops[-1].y_shape) != 3:
                raise OperatorError(
                    f"in composite task {task!r}, {ops[-1].task!r} gives a measurement of shape "
                    f"{list(ops[-1].y_shape)}, not an image, so it cannot be followed by {part!r}; put it last"
                )
            ops.append(make_operator(part, current, generator))
            current = tuple(ops[-1].y_shape)  # type: ignore[assignment]
        return compose(ops)
    if is_user_spec(task, tuple(_SPECS)):
        if mask is not None:
            raise OperatorError("mask= is only used by task inpaint-mask, not by a user operator")
        return load_user_operator(task, dims)
    name, param = parse_task(task)
    spec = _SPECS[name]
    mask_tensor: Tensor | None = None
    if mask is not None:
        if name != "inpaint-mask":
            raise OperatorError(f"mask= is only used by task inpaint-mask, not {name!r}")
        if param is not None:
            raise OperatorError("give the mask either as inpaint-mask:PATH or as mask=, not both")
        if isinstance(mask, (str, Path)):
            param = str(mask)
        else:
            mask_tensor = torch.as_tensor(mask)
    canonical = name if param is None else f"{name}:{_fmt(param)}"
    assert spec.build is not None
    return spec.build(param, dims, generator, mask_tensor, canonical)


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
    parts = split_composite(task) if isinstance(task, str) else [task]
    h, w = int(image_shape[-2]), int(image_shape[-1])
    for part in reversed(parts):
        if isinstance(part, str) and is_user_spec(part, tuple(_SPECS)):
            raise OperatorError(
                f"cannot infer the image size of user operator {part!r} from a measurement image; "
                "simulate with --input, or build the operator with make_operator(task, shape)"
            )
        name, param = parse_task(part)
        spec = _SPECS[name]
        if spec.x_from_y is not None:
            h, w = spec.x_from_y(param, (int(image_shape[0]), h, w))
    return (channels, h, w)
