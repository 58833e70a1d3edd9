"""A batch of per-sample operators acting as one (each sample keeps its own mask, kernel or random transform).

:func:`stack` builds the right kind: an :class:`SVDOperator` when every part is SVD-structured with the same singular
values (random masks, random compressed-sensing transforms), a :class:`LinearOperator` when every part is linear,
else an :class:`Operator`. Every capability the parts share, their initial and classical estimates included, is
applied sample by sample, so a sample's result does not depend on the batch it ran in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import OperatorError
from .base import LinearOperator, Operator, SVDOperator

__all__ = ["StackedOperator", "StackedLinearOperator", "StackedSVDOperator", "stack"]


class StackedOperator(Operator):
    """Applies ``parts[i]`` to sample ``i`` of a batch.

    Args:
        parts: one operator per sample, all with the same ``task``, ``x_shape`` and ``y_shape``.
    """

    def __init__(self, parts: Sequence[Operator]) -> None:
        ops = list(parts)
        if not ops:
            raise OperatorError("a stacked operator needs at least one operator")
        x_shapes = {tuple(op.x_shape) for op in ops}
        y_shapes = {tuple(op.y_shape) for op in ops}
        if len(x_shapes) != 1 or len(y_shapes) != 1:
            raise OperatorError(
                f"cannot batch operators with different shapes (x: {sorted(x_shapes)}, y: {sorted(y_shapes)})"
            )
        super().__init__(ops[0].x_shape, ops[0].y_shape, ops[0].task)
        self.parts = nn.ModuleList(ops)
        self.measurement_is_image = all(op.measurement_is_image for op in ops)

    def __len__(self) -> int:
        return len(self.parts)

    def _map(self, name: str, z: Tensor) -> Tensor:
        if z.shape[0] != len(self.parts):
            raise OperatorError(f"this stacked operator takes a batch of {len(self.parts)}, got {z.shape[0]}")
        return torch.cat([getattr(op, name)(z[i : i + 1]) for i, op in enumerate(self.parts)])

    def _map_optional(self, name: str, y: Tensor) -> Tensor | None:
        outs = [getattr(op, name)(y[i : i + 1]) for i, op in enumerate(self.parts)]
        if any(o is None for o in outs):
            return None
        return torch.cat(outs)

    def params(self) -> dict[str, Any]:
        return {"parts": [op.params() for op in self.parts]}

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return self._map("A", x)

    def initial_estimate(self, y: Tensor) -> Tensor | None:
        return self._map_optional("initial_estimate", y)

    def classical_estimate(self, y: Tensor) -> Tensor | None:
        return self._map_optional("classical_estimate", y)

    def y_to_image(self, y: Tensor) -> Tensor:
        return self._map("y_to_image", y)

    def image_to_y(self, img: Tensor) -> Tensor:
        return self._map("image_to_y", img)


class StackedLinearOperator(StackedOperator, LinearOperator):
    """A stack of linear operators: adjoint and pseudo-inverse sample by sample."""

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        return self._map("A_adjoint", y)

    def A_dagger(self, y: Tensor, **kwargs: Any) -> Tensor:  # noqa: N802
        return self._map("A_dagger", y)


class StackedSVDOperator(StackedLinearOperator, SVDOperator):
    """A stack of SVD operators with equal singular values: ``V``, ``U`` and their transposes sample by sample."""

    def singulars(self) -> Tensor:
        return self.parts[0].singulars()

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        return self._map("Vt", x)

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        return self._map("V", z)

    def Ut(self, y: Tensor) -> Tensor:  # noqa: N802
        return self._map("Ut", y)

    def U(self, z: Tensor) -> Tensor:  # noqa: N802
        return self._map("U", z)


def stack(parts: Sequence[Operator]) -> Operator:
    """One operator for a batch: the single part itself, or the most capable stack of all of them."""
    ops = list(parts)
    if len(ops) == 1:
        return ops[0]
    if all(isinstance(op, SVDOperator) for op in ops):
        s0 = ops[0].singulars()
        if all(torch.equal(op.singulars(), s0) for op in ops[1:]):
            return StackedSVDOperator(ops)
    if all(isinstance(op, LinearOperator) for op in ops):
        return StackedLinearOperator(ops)
    return StackedOperator(ops)
