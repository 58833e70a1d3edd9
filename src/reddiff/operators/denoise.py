"""Identity operator (task ``denoise``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from reddiff.operators.base import SelectionOperator
from reddiff.operators.registry import TaskSpec, register_task

__all__ = ["Identity"]


class Identity(SelectionOperator):
    """``A(x) = x`` (denoising). SVD: ``U = V = I`` (flattening), all singular values 1.

    Args:
        shape: ``(C, H, W)``.
        task: Canonical task string.
    """

    measurement_is_image = True

    def __init__(self, shape: Sequence[int], task: str = "denoise") -> None:
        super().__init__(shape, shape, task)
        self.register_buffer("_s", torch.ones(math.prod(self.x_shape), dtype=torch.float64))

    def singulars(self) -> Tensor:
        return self._s

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return x.flatten(1)

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.n,), "spectral vector")
        return z.reshape(z.shape[0], *self.x_shape)
        return z.reshape(z.shape[0], *self.y_shape)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        return y

    def A_dagger(self, y: Tensor, **kwargs: object) -> Tensor:  # noqa: N802
        self._check_y(y)
        return y


register_task(TaskSpec(name="denoise", doc="denoising: A = identity", build=lambda _p, c: Identity(c.shape, c.task)))
