"""Colorization operator (task ``colorize``): the measurement is the mean of the three colour channels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import SelectionOperator, uniform_first_basis
from reddiff.operators.registry import TaskSpec, register_task

__all__ = ["Colorization"]


class Colorization(SelectionOperator):
    """``y = (x_R + x_G + x_B) / 3``, shape ``[B, 1, H, W]``.

    SVD, per pixel: ``V`` is the 3x3 orthonormal basis ``Q`` whose first column is ``(1, 1, 1) / sqrt(3)``
    (a Householder reflection), singular value ``1 / sqrt(3)``, ``U = I``. Spectral layout: ``Vt(x)`` is
    ``[B, 3 * H * W]`` ordered ``(k, h, w)`` where ``k`` indexes the basis vector, so the first ``r = H * W`` entries
    (``k = 0``, the scaled grey image) pair with the singular values; ``Ut(y)`` is ``y`` flattened (``[B, H * W]``).

    Args:
        shape: ``(3, H, W)``.
        task: Canonical task string.

    Raises:
        OperatorError: If the image does not have 3 channels.
    """

    def __init__(self, shape: Sequence[int], task: str = "colorize") -> None:
        c, h, w = (int(s) for s in shape)
        if c != 3:
            raise OperatorError(f"colorize needs 3-channel images, got {c} channel(s)")
        super().__init__((c, h, w), (1, h, w), task)
        self.register_buffer("basis", uniform_first_basis(3))
        self.register_buffer("_s", torch.full((h * w,), 1.0 / math.sqrt(3.0), dtype=torch.float64))

    def singulars(self) -> Tensor:
        return self._s

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return torch.einsum("bchw,ck->bkhw", x, self._cast(self.basis, x)).flatten(1)

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.n,), "spectral vector")
        z = z.reshape(z.shape[0], *self.x_shape)
        return torch.einsum("bkhw,ck->bchw", z, self._cast(self.basis, z))
        return z.reshape(z.shape[0], *self.y_shape)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return x.mean(dim=1, keepdim=True)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        return y.expand(-1, 3, -1, -1) / 3.0

    def A_dagger(self, y: Tensor, **kwargs: object) -> Tensor:  # noqa: N802
        """Closed form: ``A A^T = I / 3``, so ``A^+ y`` repeats the grey image in every channel."""
        self._check_y(y)
        return y.expand(-1, 3, -1, -1).clone()

    def y_to_image(self, y: Tensor) -> Tensor:
        """The grey image ``[B, 1, H, W]`` (unchanged)."""
        self._check_y(y)
        return y

    def image_to_y(self, img: Tensor) -> Tensor:
        """Accepts a grey image ``[B, 1, H, W]`` or a 3-channel one ``[B, 3, H, W]`` (its channel mean is taken).

        Raises:
            OperatorError: If the image is not ``[B, 1 or 3, H, W]``.
        """
        _, h, w = self.x_shape
        if img.dim() != 4 or img.shape[1] not in (1, 3) or tuple(img.shape[2:]) != (h, w):
            raise OperatorError(
                f"measurement image for {self.task} must have shape [B, 1, {h}, {w}] (or 3 channels), "
                f"got [{', '.join(map(str, img.shape))}]"
            )
        return img.mean(dim=1, keepdim=True) if img.shape[1] == 3 else img


register_task(TaskSpec(name="colorize", doc="colorization: y = mean of the 3 colour channels",
                       build=lambda _p, c: Colorization(c.shape, c.task)))
