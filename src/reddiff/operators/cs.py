"""Compressed sensing (task ``cs:RATIO``) with a fast orthonormal random transform.

``A = S T`` where ``T = C D P`` is an orthonormal ``n x n`` transform of the flattened image (``n = C * H * W``):
``P`` a random permutation of the ``n`` entries, ``D`` random signs, ``C`` the orthonormal 2-D DCT-II of each
``H x W`` channel plane (dense ``H x H`` and ``W x W`` DCT matrices, so ``O(n (H + W))``), and ``S`` keeps
``m = round(RATIO * n)`` coefficients chosen at random. ``T`` is orthonormal for every image size (no zero padding:
padding to a power of two would break the orthonormality of the rows), so ``A A^T = I``, ``A^T`` is exact and the
pseudo-inverse is ``A^+ = A^T``. All random choices come from the caller's generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import SelectionOperator
from reddiff.operators.jpeg import dct_matrix
from reddiff.operators.registry import TaskSpec, register_task
from reddiff.params import Range

__all__ = ["CompressedSensing"]


class CompressedSensing(SelectionOperator):
    """``y = S C D P x`` (see the module docstring): ``m = max(1, round(ratio * n))`` orthonormal random measurements.

    SVD: all ``m`` singular values are 1, ``U = I``, and ``Vt(x)`` is ``T x`` reordered to
    ``[kept coefficients (in the order of y)..., dropped coefficients...]``.

    The measurement image (:meth:`y_to_image`) is ``A^T y``, the orthogonal projection of ``x`` onto the measured
    subspace, shaped like ``x``; :meth:`image_to_y` applies ``A`` to it (exact unless the image was clipped to
    [-1, 1] when saved).

    Args:
        shape: ``(C, H, W)``.
        ratio: Fraction of measurements, ``0 < ratio <= 1``.
        generator: Source of the permutation, the signs and the kept coefficients.
        task: Canonical task string.
    """

    def __init__(
        self, shape: Sequence[int], ratio: float, generator: torch.Generator | None = None, task: str = "cs:0.25"
    ) -> None:
        c, h, w = (int(s) for s in shape)
        n = c * h * w
        if not (math.isfinite(float(ratio)) and 0.0 < float(ratio) <= 1.0):
            raise OperatorError(f"cs ratio must be a number with 0 < RATIO <= 1, got {ratio}")
        m = max(1, int(round(float(ratio) * n)))
        super().__init__((c, h, w), (m,), task)
        self.ratio = float(ratio)
        perm = torch.randperm(n, generator=generator)
        signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2.0 - 1.0
        order = torch.randperm(n, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("signs", signs)
        self.register_buffer("order", order)  # first m: kept coefficients, in the order of y
        self.register_buffer("inv_order", torch.argsort(order))
        self.register_buffer("dct_h", dct_matrix(h))
        self.register_buffer("dct_w", dct_matrix(w))
        self.register_buffer("_s", torch.ones(m, dtype=torch.float64))

    def params(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "m": self.y_shape[0], "n": self.n, "transform": "permute+signs+dct2"}

    # -- the orthonormal transform T and its transpose ----------------------------------------------------------
    def _t(self, x: Tensor) -> Tensor:
        v = x.flatten(1)[:, self.perm] * self._cast(self.signs, x)
        v = v.reshape(x.shape[0], *self.x_shape)
        return (self._cast(self.dct_h, x) @ v @ self._cast(self.dct_w, x).T).flatten(1)

    def _tt(self, z: Tensor) -> Tensor:
        v = z.reshape(z.shape[0], *self.x_shape)
        v = (self._cast(self.dct_h, z).T @ v @ self._cast(self.dct_w, z)).flatten(1) * self._cast(self.signs, z)
        out = torch.empty_like(v)
        out[:, self.perm] = v
        return out.reshape(z.shape[0], *self.x_shape)

    # -- SVD interface ------------------------------------------------------------------------------------------
    def singulars(self) -> Tensor:
        return self._s

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return self._t(x)[:, self.order]

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.n,), "spectral vector")
        return self._tt(z[:, self.inv_order])
        return z

    # -- fast paths ---------------------------------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return self._t(x)[:, self.order[: self.y_shape[0]]]

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        z = y.new_zeros(y.shape[0], self.n)
        z[:, self.order[: self.y_shape[0]]] = y
        return self._tt(z)

    def A_dagger(self, y: Tensor, **kwargs: object) -> Tensor:  # noqa: N802
        """Closed form: the rows are orthonormal (``A A^T = I``), so ``A^+ = A^T``."""
        return self.A_adjoint(y)

    def y_to_image(self, y: Tensor) -> Tensor:
        """``A^T y`` shaped like ``x`` (the projection of ``x`` onto the measured subspace)."""
        return self.A_adjoint(y)

    def image_to_y(self, img: Tensor) -> Tensor:
        """``A img`` (inverse of :meth:`y_to_image`)."""
        self._check(img, self.x_shape, "measurement image")
        return self.A(img)


register_task(TaskSpec(
    name="cs",
    doc="compressed sensing: a fraction RATIO of the coefficients of a random orthonormal transform (permutation, "
    "signs, 2-D DCT)",
    param=float, symbol="RATIO", default=0.25, check=Range(low=0.0, high=1.0, low_open=True),
    build=lambda p, c: CompressedSensing(c.shape, p, c.generator, c.task),
))
