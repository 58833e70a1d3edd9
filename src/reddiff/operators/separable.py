"""Per-channel separable linear operators ``Y_c = M_h X_c M_w^T`` with their exact SVD (blurs, bicubic resampling)."""

from __future__ import annotations

import torch
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import SVDOperator

__all__ = ["SeparableOperator"]


class SeparableOperator(SVDOperator):
    """Per-channel separable linear map ``Y_c = M_h X_c M_w^T`` with ``M_h: [h, H]``, ``M_w: [w, W]``.

    ``A`` is the Kronecker product ``I_C (x) M_h (x) M_w``; its SVD follows from the two 1-D SVDs
    (computed in float64 at construction) ``M_h = U_h S_h V_h^T``, ``M_w = U_w S_w V_w^T`` (``h <= H``,
    ``w <= W``). Spectral layout: ``Vt(x)`` computes ``V_h^T X_c V_w`` (``[B, C, H, W]``); its first
    ``r = C * h * w`` entries are the ``[:, :, :h, :w]`` block flattened in ``(c, i, j)`` order, with singular value
    ``S_h[i] * S_w[j]``, followed by the remaining entries in ``(c, i, j)`` order. ``Ut(y)`` is
    ``U_h^T Y_c U_w`` flattened in ``(c, i, j)`` order.

    Args:
        mat_h: ``[h, H]`` matrix (``h <= H``) acting on rows.
        mat_w: ``[w, W]`` matrix (``w <= W``) acting on columns.
        channels: Number of channels ``C``.
        task: Canonical task string.
    """

    def __init__(self, mat_h: Tensor, mat_w: Tensor, channels: int, task: str) -> None:
        mat_h = torch.as_tensor(mat_h).to(torch.float64)
        mat_w = torch.as_tensor(mat_w).to(torch.float64)
        h, big_h = mat_h.shape
        w, big_w = mat_w.shape
        if h > big_h or w > big_w:
            raise OperatorError(f"separable operator needs h <= H and w <= W, got [{h}, {big_h}] and [{w}, {big_w}]")
        super().__init__((channels, big_h, big_w), (channels, h, w), task)
        self.register_buffer("mat_h", mat_h)
        self.register_buffer("mat_w", mat_w)
        uh, sh, vht = torch.linalg.svd(mat_h, full_matrices=True)
        uw, sw, vwt = torch.linalg.svd(mat_w, full_matrices=True)
        self.register_buffer("u_h", uh)
        self.register_buffer("u_w", uw)
        self.register_buffer("v_h", vht.T.contiguous())
        self.register_buffer("v_w", vwt.T.contiguous())
        self.register_buffer("_s", torch.outer(sh, sw).flatten().repeat(channels))
        # Permutation from the (c, i, j) flattening of V_h^T X V_w to the spectral order (kept block first).
        idx = torch.arange(channels * big_h * big_w).view(channels, big_h, big_w)
        keep = torch.zeros(channels, big_h, big_w, dtype=torch.bool)
        keep[:, :h, :w] = True
        perm = torch.cat([idx[keep], idx[~keep]])
        self._identity_perm = bool(h == big_h and w == big_w)
        self.register_buffer("_perm", perm)
        self.register_buffer("_inv_perm", torch.argsort(perm))

    def singulars(self) -> Tensor:
        return self._s

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        z = (self._cast(self.v_h, x).T @ x @ self._cast(self.v_w, x)).flatten(1)
        return z if self._identity_perm else z[:, self._perm]

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.n,), "spectral vector")
        if not self._identity_perm:
            z = z[:, self._inv_perm]
        z = z.reshape(z.shape[0], *self.x_shape)
        return self._cast(self.v_h, z) @ z @ self._cast(self.v_w, z).T

    def Ut(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        return (self._cast(self.u_h, y).T @ y @ self._cast(self.u_w, y)).flatten(1)

    def U(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.r,), "spectral vector")
        z = z.reshape(z.shape[0], *self.y_shape)
        return self._cast(self.u_h, z) @ z @ self._cast(self.u_w, z).T

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return self._cast(self.mat_h, x) @ x @ self._cast(self.mat_w, x).T

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        return self._cast(self.mat_h, y).T @ y @ self._cast(self.mat_w, y)
