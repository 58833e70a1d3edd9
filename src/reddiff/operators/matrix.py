"""A dense matrix as an SVD-structured operator on ``[B, d]`` vectors (exact references, toy problems)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import SVDOperator

__all__ = ["MatrixOperator"]


class MatrixOperator(SVDOperator):
    """``A(x) = M x`` for vectors ``x`` of shape ``[B, d]`` and a dense matrix ``M`` of shape ``[m, d]``.

    The SVD ``M = U diag(s) V^T`` is computed in float64 at construction (``full_matrices=True``), with the layout of
    :mod:`reddiff.operators.base`: ``r = min(m, d)`` singular values (sorted descending, possibly zero);
    ``Vt(x) = x V`` is ``[B, d]`` whose first ``r`` entries pair with ``s``; ``Ut(y) = y U[:, :r]`` is ``[B, r]``.

    Args:
        matrix: ``[m, d]`` real matrix.
        task: name recorded in run files (default ``"matrix"``).
    """

    def __init__(self, matrix: Tensor, task: str = "matrix") -> None:
        mat = torch.as_tensor(matrix).detach().to(torch.float64)
        if mat.dim() != 2 or mat.shape[0] < 1 or mat.shape[1] < 1:
            raise OperatorError(f"MatrixOperator needs a non-empty [m, d] matrix, got shape {tuple(mat.shape)}")
        if not bool(torch.isfinite(mat).all()):
            raise OperatorError("MatrixOperator: the matrix has NaN or Inf entries")
        m, d = mat.shape
        super().__init__((d,), (m,), task)
        u, s, vh = torch.linalg.svd(mat, full_matrices=True)
        r = min(m, d)
        self.register_buffer("matrix", mat)
        self.register_buffer("_u", u[:, :r].contiguous())
        self.register_buffer("_s", s[:r].contiguous())
        self.register_buffer("_v", vh.T.contiguous())

    def singulars(self) -> Tensor:
        return self._s

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return x @ self._cast(self._v, x)

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.n,), "spectral vector")
        return z @ self._cast(self._v, z).T

    def Ut(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        return y @ self._cast(self._u, y)

    def U(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.r,), "spectral vector")
        return z @ self._cast(self._u, z).T

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return x @ self._cast(self.matrix, x).T

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        return y @ self._cast(self.matrix, y)

    def params(self) -> dict[str, Any]:
        return {"m": int(self.matrix.shape[0]), "d": int(self.matrix.shape[1])}

    def describe(self) -> str:
        m, d = self.matrix.shape
        return f"{self.task}: MatrixOperator, x {d} -> y {m}"
