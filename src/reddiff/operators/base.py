"""Operator base classes: ``Operator`` -> ``LinearOperator`` -> ``SVDOperator``.

Measurement model: ``y = A(x) + sigma_y * noise``; the operator implements ``A`` only (the caller adds the noise).
Images ``x`` are ``[B, C, H, W]`` tensors in [-1, 1].

Dtype and device: floating buffers (kernels, matrices, SVD factors) are computed in float64 at construction and
stored as float64 buffers, so ``op.to(torch.float64)`` is exact and the SVD factors are orthonormal to float64
precision. Every method casts the buffers it uses to the dtype of its input, so the output dtype follows the input
(float32 in -> float32 out). ``op.to(device)`` moves the buffers; on a device without float64 support use
``op.to(device, torch.float32)``.

SVD interface (used by DDRM-style solvers), for an operator with ``n = C * H * W`` unknowns, a measurement of
``m = prod(y_shape)`` entries and ``r = singulars().numel()`` singular values (``r <= min(n, m)``; for every
built-in operator ``r == m``):

* ``A = U diag(s) V^T`` with ``s = singulars()`` of shape ``[r]`` (non-negative, possibly zero, not necessarily
  sorted).
* ``Vt(x)``: ``[B, C, H, W] -> [B, n]``; an orthogonal change of basis whose first ``r`` entries are the
  coefficients that ``s`` multiplies (entry ``i < r`` pairs with ``s[i]``), the remaining ``n - r`` span the null
  space of ``A``.
* ``V(z)``: ``[B, n] -> [B, C, H, W]``, the inverse (and transpose) of ``Vt``.
* ``Ut(y)``: ``[B, *y_shape] -> [B, r]``.
* ``U(z)``: ``[B, r] -> [B, *y_shape]``; ``Ut(U(z)) == z``.

So ``A(x) == U(s * Vt(x)[:, :r])``.

Optional capabilities are declared here, on the base classes, with documented defaults, and solvers check them by
type: linear operators are :class:`LinearOperator` (``A_adjoint``, ``A_dagger``), SVD-structured ones
:class:`SVDOperator`. The estimates solvers start from are methods of every operator that return ``None`` when the
operator has none of its own (:meth:`Operator.initial_estimate`, :meth:`Operator.classical_estimate`);
:meth:`Operator.inverse_estimate` is the rough inverse a solver starts from (the operator's own initial estimate,
else ``A_dagger`` for linear operators).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reddiff.errors import OperatorError

__all__ = [
    "Operator",
    "LinearOperator",
    "SVDOperator",
    "SelectionOperator",
    "conjugate_gradient",
    "uniform_first_basis",
]


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def uniform_first_basis(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """An orthonormal ``n x n`` basis whose first column is the uniform vector ``ones(n) / sqrt(n)``.

    Built as the Householder reflection ``I - 2 v v^T / (v^T v)`` with ``v = e_1 - u``, which maps ``e_1`` to
    ``u``; the matrix is symmetric and orthogonal.

    Args:
        n: Dimension (>= 1).
        dtype: Floating dtype of the result.

    Returns:
        ``Q`` of shape ``[n, n]`` with ``Q[:, 0] = 1 / sqrt(n)`` and ``Q^T Q = I``.
    """
    u = torch.full((n,), 1.0 / math.sqrt(n), dtype=torch.float64)
    v = -u.clone()
    v[0] += 1.0
    vv = torch.dot(v, v)
    q = torch.eye(n, dtype=torch.float64)
    if vv > 0:
        q = q - 2.0 * torch.outer(v, v) / vv
    return q.to(dtype)


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Batched conjugate gradients for ``M z = b`` with ``M`` symmetric positive semi-definite.

    Each sample (leading dimension) is its own system with its own step sizes. Iteration stops when every
    sample's residual satisfies ``||r|| <= tol * ||b||`` or after ``iters`` iterations. For a consistent
    singular system started at zero, CG stays in the range of ``M``.

    Args:
        apply: The map ``z -> M z`` (batched, shape preserving).
        b: Right-hand side ``[B, ...]``.
        iters: Maximum number of iterations.
        tol: Relative residual tolerance.

    Returns:
        The approximate solution, same shape as ``b``.
    """
    dims = tuple(range(1, b.dim()))
    z = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(dims, keepdim=True)
    target = (tol**2) * rs
    for _ in range(iters):
        if bool((rs <= target).all()):
            break
        mp = apply(p)
        pmp = (p * mp).sum(dims, keepdim=True)
        alpha = torch.where(pmp > 0, rs / torch.where(pmp > 0, pmp, torch.ones_like(pmp)), torch.zeros_like(pmp))
        z = z + alpha * p
        r = r - alpha * mp
        rs_new = (r * r).sum(dims, keepdim=True)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return z


class Operator(nn.Module):
    """A forward operator ``A`` mapping images ``[B, *x_shape]`` to measurements ``[B, *y_shape]``.

    Subclasses implement :meth:`A`; ``forward`` calls it. Operators hold no trainable parameters; masks, kernels
    and matrices are buffers, so ``.to(dtype)`` / ``.to(device)`` work. Treat instances as immutable.

    Attributes:
        task: Canonical task string, e.g. ``"sr:4"``.
        x_shape: ``(C, H, W)`` of one image.
        y_shape: Shape of one measurement (without the batch dimension).
        linear: Whether ``A`` is linear.
    """

    linear: bool = False

    def __init__(self, x_shape: Sequence[int], y_shape: Sequence[int], task: str) -> None:
        super().__init__()
        self.x_shape: tuple[int, int, int] = tuple(int(s) for s in x_shape)  # type: ignore[assignment]
        self.y_shape: tuple[int, ...] = tuple(int(s) for s in y_shape)
        self.task: str = task

    # -- the operator -------------------------------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:  # noqa: N802 - the paper's name
        """Apply the forward operator to ``x`` of shape ``[B, *x_shape]``; returns ``[B, *y_shape]``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`A`."""
        return self.A(x)

    # -- optional capabilities (defaults: none of its own) -------------------------------------------------------
    def initial_estimate(self, y: Tensor) -> Tensor | None:
        """The operator's own rough inverse of ``y`` (``[B, *x_shape]``), or None when it has none.

        Operators override this where a better start than the plain pseudo-inverse exists (a blur's truncated
        pseudo-inverse, phase retrieval's HIO, ``y / factor`` for HDR). Default: None.
        """
        return None

    def classical_estimate(self, y: Tensor) -> Tensor | None:
        """A prior-free classical restoration of ``y`` (bicubic back-projection for block averaging,
        normalised-convolution filling for inpainting), or None when the operator has none. Default: None."""
        return None

    def inverse_estimate(self, y: Tensor) -> Tensor | None:
        """The rough inverse solvers start from: :meth:`initial_estimate`, else None (linear operators fall back to
        ``A_dagger``)."""
        return self.initial_estimate(y)

    #: Whether the measurement is itself a picture (blurred, downsampled, noisy, tone-mapped, compressed ...), on
    #: which neighbouring entries are neighbouring pixels; robust starts filter only such measurements.
    measurement_is_image: bool = False

    #: Whether the operator observes a subset of the image's entries (inpainting). The official RED-diff code
    #: measures such an operator as the whole image with the unobserved entries zeroed, so its mean data term
    #: averages over every image entry; RED-diff's ``data_term="reference"`` reproduces that for these operators.
    masks_image: bool = False

    def fallback_estimate(self, y: Tensor) -> tuple[Tensor, str]:
        """A start for an operator without any estimate of its own, and what it is in words: the measurement itself
        when it has the image's shape, the measurement resized (bilinear) to the image when it is an image with the
        same channels, else zeros (mid-grey); clipped to the image range [-1, 1]."""
        x_shape = tuple(self.x_shape)
        if tuple(y.shape[1:]) == x_shape:
            return y.clamp(-1, 1), "the measurement itself (it has the image's shape)"
        if y.dim() == 4 and len(x_shape) == 3 and y.shape[1] == x_shape[0]:
            resized = torch.nn.functional.interpolate(y, size=x_shape[1:], mode="bilinear", align_corners=False)
            return resized.clamp(-1, 1), f"the measurement resized from {y.shape[-2]}x{y.shape[-1]} to the image"
        return torch.zeros((y.shape[0], *x_shape), dtype=y.dtype, device=y.device), "zeros (mid-grey)"

    # -- description --------------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """JSON-serialisable description of the operator's parameters (for run records)."""
        return {}

    def describe(self) -> str:
        """One-line human-readable description."""
        extra = ", ".join(f"{k}={v}" for k, v in self.params().items())
        c, h, w = self.x_shape
        text = f"{self.task}: {type(self).__name__}, x {c}x{h}x{w} -> y {'x'.join(map(str, self.y_shape))}"
        return f"{text} ({extra})" if extra else text

    def extra_repr(self) -> str:
        return f"task={self.task!r}, x_shape={self.x_shape}, y_shape={self.y_shape}"

    # -- measurement <-> viewable image -------------------------------------------------------------------------
    def y_to_image(self, y: Tensor) -> Tensor:
        """The measurement as an image a user would look at, ``[B, C', H', W']`` in [-1, 1].

        The default (for measurements that are already images) returns ``y`` unchanged.
        """
        self._check(y, self.y_shape, "measurement")
        if len(self.y_shape) != 3:
            raise NotImplementedError(f"{type(self).__name__} does not define y_to_image")
        return y

    def image_to_y(self, img: Tensor) -> Tensor:
        """Inverse of :meth:`y_to_image`: turn a measurement image back into ``y`` of shape ``[B, *y_shape]``.

        Raises:
            OperatorError: If the image has the wrong shape.
        """
        if len(self.y_shape) != 3:
            raise NotImplementedError(f"{type(self).__name__} does not define image_to_y")
        self._check(img, self.y_shape, "measurement image")
        return img

    # -- helpers ------------------------------------------------------------------------------------------------
    def _check(self, t: Tensor, expected: Sequence[int], what: str) -> None:
        """Raise :class:`OperatorError` unless ``t`` has shape ``[B, *expected]``."""
        if t.dim() != len(expected) + 1 or tuple(t.shape[1:]) != tuple(expected):
            raise OperatorError(
                f"{what} for {self.task} must have shape [B, {_shape_str(expected)[1:-1]}], got {_shape_str(t.shape)}"
            )

    def _check_x(self, x: Tensor) -> None:
        self._check(x, self.x_shape, "image")

    def _check_y(self, y: Tensor) -> None:
        self._check(y, self.y_shape, "measurement")

    @staticmethod
    def _cast(buf: Tensor, like: Tensor) -> Tensor:
        """Buffer ``buf`` in the floating dtype and on the device of ``like``."""
        return buf.to(device=like.device, dtype=like.dtype)


class LinearOperator(Operator):
    """A linear operator with adjoint ``A_adjoint`` and pseudo-inverse ``A_dagger``.

    ``A_dagger`` defaults to the minimum-norm least-squares solution by conjugate gradients:
    solve ``(A A^T) z = y``, return ``A^T z``. Subclasses with closed forms override it.

    Args:
        x_shape: ``(C, H, W)``.
        y_shape: Measurement shape.
        task: Canonical task string.
        cg_iters: Default maximum number of CG iterations for :meth:`A_dagger`.
        cg_tol: Default relative residual tolerance for :meth:`A_dagger`.
    """

    linear: bool = True

    def __init__(
        self,
        x_shape: Sequence[int],
        y_shape: Sequence[int],
        task: str,
        *,
        cg_iters: int = 100,
        cg_tol: float = 1e-6,
    ) -> None:
        super().__init__(x_shape, y_shape, task)
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        """Apply ``A^T`` to ``y`` of shape ``[B, *y_shape]``; returns ``[B, *x_shape]``."""
        raise NotImplementedError

    def A_dagger(self, y: Tensor, *, cg_iters: int | None = None, cg_tol: float | None = None) -> Tensor:  # noqa: N802
        """Minimum-norm least-squares solution ``x = A^T (A A^T)^+ y`` by conjugate gradients.

        Args:
            y: Measurement ``[B, *y_shape]``.
            cg_iters: Maximum CG iterations (default: the operator's ``cg_iters``).
            cg_tol: Relative residual tolerance (default: the operator's ``cg_tol``).

        Returns:
            ``[B, *x_shape]``.
        """
        self._check_y(y)
        iters = self.cg_iters if cg_iters is None else int(cg_iters)
        tol = self.cg_tol if cg_tol is None else float(cg_tol)
        z = conjugate_gradient(lambda v: self.A(self.A_adjoint(v)), y, iters=iters, tol=tol)
        return self.A_adjoint(z)

    def inverse_estimate(self, y: Tensor) -> Tensor:
        """:meth:`initial_estimate` where the operator has its own, else ``A_dagger(y)``."""
        own = self.initial_estimate(y)
        return own if own is not None else self.A_dagger(y)


class SVDOperator(LinearOperator):
    """A linear operator given by its singular value decomposition ``A = U diag(s) V^T``.

    Subclasses implement :meth:`singulars`, :meth:`Vt`, :meth:`V`, :meth:`Ut` and :meth:`U` with the shapes
    documented in this module's docstring; :meth:`A`, :meth:`A_adjoint` and :meth:`A_dagger` follow from them
    (subclasses may override them with faster equivalents).
    """

    def singulars(self) -> Tensor:
        """Singular values ``s``, shape ``[r]``, in the operator's buffer dtype (float64 unless cast)."""
        raise NotImplementedError

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        """``V^T x``: ``[B, C, H, W] -> [B, n]``; entry ``i < r`` pairs with ``singulars()[i]``."""
        raise NotImplementedError

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        """``V z``: ``[B, n] -> [B, C, H, W]``."""
        raise NotImplementedError

    def Ut(self, y: Tensor) -> Tensor:  # noqa: N802
        """``U^T y``: ``[B, *y_shape] -> [B, r]``."""
        raise NotImplementedError

    def U(self, z: Tensor) -> Tensor:  # noqa: N802
        """``U z``: ``[B, r] -> [B, *y_shape]``."""
        raise NotImplementedError

    @property
    def n(self) -> int:
        """Number of unknowns ``C * H * W``."""
        return math.prod(self.x_shape)

    @property
    def r(self) -> int:
        """Number of singular values."""
        return int(self.singulars().numel())

    def _pad(self, z: Tensor) -> Tensor:
        """Pad ``[B, r]`` spectral coefficients with zeros to ``[B, n]``."""
        return torch.cat([z, z.new_zeros(z.shape[0], self.n - z.shape[1])], dim=1)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        s = self._cast(self.singulars(), x)
        return self.U(s * self.Vt(x)[:, : s.numel()])

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        s = self._cast(self.singulars(), y)
        return self.V(self._pad(s * self.Ut(y)))

    def pinv_singulars(self, like: Tensor, rtol: float | None = None) -> Tensor:
        """``s^+``: ``1 / s`` where ``s > rtol * max(s)``, else 0, in the dtype/device of ``like``.

        Args:
            like: Tensor whose dtype and device the result takes.
            rtol: Relative cutoff; default ``max(H, W) * eps`` of ``like``'s dtype (the SVD factors are exact to
                float64 precision, so the cutoff only guards against amplifying rounding errors of ``y``). Use a
                larger value (e.g. ``1e-3``) to regularise ill-conditioned operators such as Gaussian blur.
        """
        s = self._cast(self.singulars(), like)
        if rtol is None:
            rtol = max(self.x_shape[1:] or self.x_shape) * torch.finfo(s.dtype).eps
        if s.numel() == 0:
            return s
        keep = s > rtol * s.max()
        return torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))

    def A_dagger(  # noqa: N802
        self, y: Tensor, *, rtol: float | None = None, cg_iters: int | None = None, cg_tol: float | None = None
    ) -> Tensor:
        """Pseudo-inverse ``V S^+ U^T y`` (singular values at or below ``rtol * max(s)`` are treated as 0).

        Args:
            y: Measurement ``[B, *y_shape]``.
            rtol: Relative cutoff (see :meth:`pinv_singulars`); raise it to regularise ill-conditioned operators.
            cg_iters: Ignored (closed form).
            cg_tol: Ignored (closed form).

        Returns:
            ``[B, *x_shape]``.
        """
        return self.V(self._pad(self.pinv_singulars(y, rtol) * self.Ut(y)))


class SelectionOperator(SVDOperator):
    """An SVD operator with ``U = I``: an orthonormal change of basis ``V^T``, then the first ``r`` coefficients
    scaled by the singular values, ``A(x) = s * Vt(x)[:, :r]`` reshaped to ``y_shape``.

    Inpainting (a permutation), block averaging and colorization (a per-block / per-pixel basis whose first vector
    is uniform), compressed sensing (a random orthonormal transform) and the identity are of this kind; they
    implement :meth:`singulars`, :meth:`Vt` and :meth:`V` (and may override :meth:`A`, :meth:`A_adjoint`,
    :meth:`A_dagger` with faster equivalents), and inherit ``U`` / ``U^T``: reshaping between ``[B, r]`` and
    ``[B, *y_shape]``.
    """

    def Ut(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        return y.flatten(1)

    def U(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.r,), "spectral vector")
        return z.reshape(z.shape[0], *self.y_shape)
