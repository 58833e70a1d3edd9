"""Super-resolution operators: ``F x F`` block averaging (task ``sr:F``) and bicubic downsampling (``bicubic:F``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import SelectionOperator, uniform_first_basis
from reddiff.operators.registry import TaskSpec, register_task
from reddiff.operators.separable import SeparableOperator
from reddiff.params import Range

__all__ = ["BlockAverage", "Bicubic", "bicubic_matrix", "keys_cubic"]


def _check_factor(factor: int, shape: Sequence[int], task: str) -> tuple[int, int, int, int]:
    if isinstance(factor, bool) or int(factor) != factor or int(factor) < 1:
        raise OperatorError(f"{task}: the factor must be a positive integer, got {factor!r}")
    c, h, w = (int(s) for s in shape)
    f = int(factor)
    if h % f or w % f:
        raise OperatorError(f"{task} needs the image size to be divisible by {f}, got {h}x{w}")
    return c, h, w, f


class BlockAverage(SelectionOperator):
    """``F x F`` block averaging, ``y[b, c, i, j] = mean(x[b, c, F*i:F*i+F, F*j:F*j+F])``, shape ``[B, C, H/F, W/F]``.

    SVD, per block: ``V`` is the orthonormal ``F^2 x F^2`` basis ``Q`` whose first column is uniform (a Householder
    reflection), singular value ``1 / F``, ``U = I``. Spectral layout of ``Vt(x)`` (``[B, C*H*W]``): first the
    ``r = C * (H/F) * (W/F)`` uniform-basis coefficients ordered ``(c, i, j)`` (equal to ``F * y``), then the other
    basis coefficients ordered ``(k, c, i, j)`` for ``k = 1 .. F^2 - 1``; ``Ut(y)`` is ``y`` flattened.

    Args:
        factor: Integer factor ``F``.
        shape: ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``F``.
        task: Canonical task string.

    Raises:
        OperatorError: If ``F`` is not a positive integer or the size is not divisible by it.
    """

    measurement_is_image = True

    def __init__(self, factor: int, shape: Sequence[int], task: str | None = None) -> None:
        task = f"sr:{factor}" if task is None else task
        c, h, w, f = _check_factor(factor, shape, task)
        super().__init__((c, h, w), (c, h // f, w // f), task)
        self.factor = f
        self.register_buffer("basis", uniform_first_basis(f * f))
        self.register_buffer("_s", torch.full((c * (h // f) * (w // f),), 1.0 / f, dtype=torch.float64))

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def singulars(self) -> Tensor:
        return self._s

    def _blocks(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H/F, W/F, F*F]``."""
        b, c, h, w = x.shape
        f = self.factor
        return x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // f, w // f, f * f)

    def _unblocks(self, z: Tensor) -> Tensor:
        """``[B, C, H/F, W/F, F*F] -> [B, C, H, W]``."""
        b, c, hh, ww, _ = z.shape
        f = self.factor
        return z.reshape(b, c, hh, ww, f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hh * f, ww * f)

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        coeff = self._blocks(x) @ self._cast(self.basis, x)
        b = x.shape[0]
        return torch.cat([coeff[..., 0].reshape(b, -1), coeff[..., 1:].permute(0, 4, 1, 2, 3).reshape(b, -1)], 1)

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.n,), "spectral vector")
        b = z.shape[0]
        c, hh, ww = self.y_shape
        k = self.factor**2
        first = z[:, : self.r].reshape(b, c, hh, ww, 1)
        rest = z[:, self.r :].reshape(b, k - 1, c, hh, ww).permute(0, 2, 3, 4, 1)
        coeff = torch.cat([first, rest], dim=-1)
        return self._unblocks(coeff @ self._cast(self.basis, z).T)
        return z.reshape(z.shape[0], *self.y_shape)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        b, c, h, w = x.shape
        f = self.factor
        return x.reshape(b, c, h // f, f, w // f, f).mean(dim=(3, 5))

    def _upsample(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        return self._upsample(y) / float(self.factor**2)

    def classical_estimate(self, y: Tensor) -> Tensor:
        """Bicubic upsampling of ``y`` back-projected onto ``A x = y`` (a prior-free start)."""
        from reddiff.operators.classical import upsample_back_project

        return upsample_back_project(self, y)

    def A_dagger(self, y: Tensor, **kwargs: object) -> Tensor:  # noqa: N802
        """Closed form: ``A A^T = I / F^2``, so ``A^+ y`` is nearest-neighbour upsampling."""
        self._check_y(y)
        return self._upsample(y)


def keys_cubic(t: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel (``a = -0.5``: the bicubic kernel of MATLAB ``imresize`` and PIL)."""
    t = t.abs()
    t2, t3 = t * t, t * t * t
    inner = (a + 2.0) * t3 - (a + 3.0) * t2 + 1.0
    outer = a * t3 - 5.0 * a * t2 + 8.0 * a * t - 4.0 * a
    return torch.where(t <= 1.0, inner, torch.where(t < 2.0, outer, torch.zeros_like(t)))


def _reflect(idx: Tensor, n: int) -> Tensor:
    """Half-sample symmetric reflection of integer indices into ``[0, n)`` (``-1 -> 0``, ``n -> n - 1``)."""
    period = 2 * n
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - 1 - idx, idx)


def bicubic_matrix(n_in: int, factor: int) -> Tensor:
    """1-D antialiased bicubic downsampling matrix ``[n_in // factor, n_in]`` (float64).

    Output sample ``i`` sits at input coordinate ``(i + 0.5) * F - 0.5``; its weights are the Keys kernel
    (``a = -0.5``) stretched by ``F`` (support ``4F`` taps, as MATLAB ``imresize`` / PIL ``BICUBIC`` reduce do),
    normalised to sum 1. Taps outside the signal are folded back by half-sample symmetric reflection, so every
    row sums to 1 (a constant signal stays constant).

    Args:
        n_in: Input length.
        factor: Integer downsampling factor.
    """
    n_out = n_in // factor
    centers = (torch.arange(n_out, dtype=torch.float64) + 0.5) * factor - 0.5
    offsets = torch.arange(-2 * factor - 1, 2 * factor + 2, dtype=torch.float64)
    taps = torch.floor(centers).view(-1, 1) + offsets.view(1, -1)
    weights = keys_cubic((taps - centers.view(-1, 1)) / factor)
    weights = weights / weights.sum(dim=1, keepdim=True)
    mat = torch.zeros(n_out, n_in, dtype=torch.float64)
    cols = _reflect(taps.long(), n_in)
    mat.scatter_add_(1, cols, weights)
    return mat


class Bicubic(SeparableOperator):
    """Bicubic downsampling by an integer factor ``F`` (task ``bicubic:F``): ``Y_c = D_H X_c D_W^T``.

    ``D_H``, ``D_W`` are :func:`bicubic_matrix` (antialiased Keys ``a = -0.5``, reflected boundary). SVD and
    spectral layout as in :class:`~reddiff.operators.separable.SeparableOperator`; ``y`` is ``[B, C, H/F, W/F]``.

    Args:
        factor: Integer factor ``F``.
        shape: ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``F``.
        task: Canonical task string.

    Raises:
        OperatorError: If ``F`` is not a positive integer or the size is not divisible by it.
    """

    measurement_is_image = True

    def __init__(self, factor: int, shape: Sequence[int], task: str | None = None) -> None:
        task = f"bicubic:{factor}" if task is None else task
        c, h, w, f = _check_factor(factor, shape, task)
        super().__init__(bicubic_matrix(h, f), bicubic_matrix(w, f), c, task)
        self.factor = f

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor, "kernel": "keys-cubic a=-0.5, antialiased", "boundary": "reflect"}


def _upscale(factor: int, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    return image_shape[1] * factor, image_shape[2] * factor


register_task(TaskSpec(
    name="sr", doc="super-resolution: F x F block averaging",
    param=int, symbol="F", default=4, check=Range(low=2, integer=True),
    build=lambda p, c: BlockAverage(p, c.shape, c.task), x_from_y=_upscale,
))
register_task(TaskSpec(
    name="bicubic", doc="super-resolution: antialiased bicubic downsampling by F",
    param=int, symbol="F", default=4, check=Range(low=2, integer=True),
    build=lambda p, c: Bicubic(p, c.shape, c.task), x_from_y=_upscale,
))
