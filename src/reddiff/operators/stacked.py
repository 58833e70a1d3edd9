"""A batch of per-sample operators acting as one (each sample keeps its own mask or kernel)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import OperatorError

__all__ = ["StackedOperator"]


class StackedOperator(nn.Module):
    """Applies ``operators[i]`` to sample ``i`` of a batch, so images with different random masks or kernels
    can share one network batch. Linear when all parts are; ``A_adjoint`` / ``A_dagger`` / ``initial_estimate``
    are offered when every part offers them.

    Args:
        operators: one operator per sample, all with the same ``x_shape`` and ``y_shape``.
    """

    def __init__(self, operators: Sequence[Any]) -> None:
        super().__init__()
        ops = list(operators)
        if not ops:
            raise OperatorError("StackedOperator needs at least one operator")
        x_shapes = {tuple(op.x_shape) for op in ops}
        y_shapes = {tuple(op.y_shape) for op in ops}
        if len(x_shapes) != 1 or len(y_shapes) != 1:
            raise OperatorError(
                f"cannot batch operators with different shapes (x: {sorted(x_shapes)}, y: {sorted(y_shapes)})"
            )
        self.parts = nn.ModuleList(ops)
        self.task = ops[0].task
        self.x_shape = tuple(ops[0].x_shape)
        self.y_shape = tuple(ops[0].y_shape)
        self.linear = all(getattr(op, "linear", False) for op in ops)
        for name in ("A_adjoint", "A_dagger", "initial_estimate"):
            if not all(callable(getattr(op, name, None)) for op in ops):
                setattr(self, name, None)

    def _map(self, name: str, z: torch.Tensor) -> torch.Tensor:
        if z.shape[0] != len(self.parts):
            raise OperatorError(f"this stacked operator takes a batch of {len(self.parts)}, got {z.shape[0]}")
        return torch.cat([getattr(op, name)(z[i : i + 1]) for i, op in enumerate(self.parts)])

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - the paper's name
        """``A(x)`` sample by sample."""
        return self._map("A", x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`A`."""
        return self.A(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``A^T y`` sample by sample."""
        return self._map("A_adjoint", y)

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``A^+ y`` sample by sample."""
        return self._map("A_dagger", y)

    def initial_estimate(self, y: torch.Tensor) -> torch.Tensor:
        """Each part's initial estimate, sample by sample."""
        return self._map("initial_estimate", y)
