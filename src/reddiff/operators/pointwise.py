"""Pointwise nonlinear operators: HDR clipping (``hdr``) and uniform quantisation (``quantize``).

Both keep the image size (``y_shape == x_shape``), so the measurement is an image and ``y_to_image`` is the identity.
Rounding uses a straight-through estimator (:func:`round_ste`): the forward pass rounds, the backward pass treats the
rounding as the identity, so gradient-based solvers (RED-diff, DPS) still get a data signal through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import Operator
from reddiff.operators.registry import TaskSpec, register_task
from reddiff.params import Range

__all__ = ["HDR", "Quantize", "round_ste", "straight_through"]


def straight_through(value: Tensor, target: Tensor) -> Tensor:
    """``target`` in the forward pass, the gradient of ``value`` in the backward pass (``value + sg(target - value)``).

    Args:
        value: The differentiable tensor whose gradient is kept.
        target: The forward value (e.g. a rounded version of ``value``); no gradient flows through it.

    Returns:
        A tensor equal to ``target`` whose Jacobian is the identity w.r.t. ``value``.
    """
    return value + (target - value).detach()


def round_ste(x: Tensor) -> Tensor:
    """Round half up (``floor(x + 0.5)``) in the forward pass, identity in the backward pass."""
    return straight_through(x, torch.floor(x + 0.5))


class HDR(Operator):
    """High dynamic range measurement: ``y = clip(factor * x, -1, 1)`` (RED-diff's HDR task uses factor 2).

    The gradient is the true one: ``factor`` where ``|factor * x| < 1`` and 0 where the output saturates.
    :meth:`initial_estimate` is ``y / factor`` (exact for unsaturated pixels).

    Args:
        shape: ``(C, H, W)``.
        factor: Exposure factor (> 0).
        task: Canonical task string.
    """

    measurement_is_image = True

    def __init__(self, shape: Sequence[int], factor: float = 2.0, task: str = "hdr:2.0") -> None:
        if not float(factor) > 0:
            raise OperatorError(f"hdr factor must be > 0, got {factor}")
        super().__init__(shape, shape, task)
        self.factor = float(factor)

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return (self.factor * x).clamp(-1.0, 1.0)

    def initial_estimate(self, y: Tensor) -> Tensor:
        """``y / factor``: exact where ``y`` is not saturated."""
        self._check_y(y)
        return y / self.factor


class Quantize(Operator):
    """Uniform quantisation to ``2**bits`` levels over [-1, 1] with straight-through rounding.

    ``y = -1 + step * round((clip(x, -1, 1) + 1) / step)`` with ``step = 2 / (2**bits - 1)``, so the levels are
    ``-1, -1 + step, ..., 1`` (``bits = 8`` gives the 256 levels of an 8-bit image). The clipping has its true gradient
    (0 outside [-1, 1]); the rounding is straight-through, so inside [-1, 1] the Jacobian is the identity.
    :meth:`initial_estimate` is ``y`` itself.

    Args:
        shape: ``(C, H, W)``.
        bits: Number of bits (1 to 16).
        task: Canonical task string.
    """

    measurement_is_image = True

    def __init__(self, shape: Sequence[int], bits: int = 4, task: str = "quantize:4") -> None:
        if not 1 <= int(bits) <= 16:
            raise OperatorError(f"quantize takes 1 to 16 bits, got {bits}")
        super().__init__(shape, shape, task)
        self.bits = int(bits)
        self.levels = 2**self.bits
        self.step = 2.0 / (self.levels - 1)

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits, "levels": self.levels}

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        u = (x.clamp(-1.0, 1.0) + 1.0) / self.step
        return round_ste(u) * self.step - 1.0

    def initial_estimate(self, y: Tensor) -> Tensor:
        """The quantised image itself."""
        self._check_y(y)
        return y.clone()


register_task(TaskSpec(
    name="hdr", doc="high dynamic range: y = clip(FACTOR x, -1, 1)",
    param=float, symbol="FACTOR", default=2.0, check=Range(low=0.0, low_open=True),
    build=lambda p, c: HDR(c.shape, p, c.task),
))
register_task(TaskSpec(
    name="quantize", doc="uniform quantisation to 2^BITS levels over [-1, 1] (straight-through rounding)",
    param=int, symbol="BITS", default=4, check=Range(low=1, high=16, integer=True),
    build=lambda p, c: Quantize(c.shape, p, c.task),
))
