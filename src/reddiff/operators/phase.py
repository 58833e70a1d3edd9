"""Fourier phase retrieval (task ``phase-retrieval[:OVERSAMPLE]``).

``y = |FFT2(pad(x))|`` per channel: the image is zero-padded by ``round((OVERSAMPLE - 1) * side / 2)`` pixels on every
side (OVERSAMPLE 2, the default, pads 1/4 of the side on every side, i.e. the padded image has twice the side), the
2-D FFT is orthonormal (``norm="ortho"``, so ``||y|| = ||x||``) and centred (``fftshift``: the zero frequency is in the
middle), and ``y`` is its magnitude, shape ``[C, H_pad, W_pad]``.

The magnitude is invariant to a global sign flip, to translations of the image content that stay inside the padded
window, and to the conjugate reflection ``x[n] -> x[-n]`` (a 180° rotation): the solution is unique only up to these
(the "trivial ambiguities").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import Operator
from reddiff.operators.registry import TaskSpec, register_task
from reddiff.params import Range

__all__ = ["PhaseRetrieval", "phase_padding", "phase_side_from_padded"]


def phase_padding(side: int, oversample: float) -> int:
    """Zero padding on each side of an image side of ``side`` pixels: ``floor((oversample - 1) * side / 2 + 0.5)``."""
    return int(math.floor((float(oversample) - 1.0) * int(side) / 2.0 + 0.5))


def phase_side_from_padded(padded: int, oversample: float) -> int:
    """The image side whose padded side is ``padded`` (inverse of ``side + 2 * phase_padding(side, oversample)``).

    Raises:
        OperatorError: If no image side gives ``padded``.
    """
    for side in range(max(1, int(padded / max(float(oversample), 1.0)) - 2), int(padded) + 1):
        if side + 2 * phase_padding(side, oversample) == int(padded):
            return side
    raise OperatorError(
        f"a phase-retrieval measurement of side {padded} matches no image side at oversampling {oversample}"
    )


class PhaseRetrieval(Operator):
    """Per-channel Fourier magnitude of the zero-padded image (see the module docstring).

    :meth:`initial_estimate` runs the hybrid input-output algorithm (Fienup 1982; ``hio_iters`` iterations with
    feedback ``beta``) followed by ``er_iters`` error-reduction iterations, with the support (the un-padded window) and
    the range [-1, 1] as constraints, from a random Fourier phase. That phase is drawn from a seed that the constructor
    takes from the caller's generator, so the estimate is a deterministic function of ``y`` for a given operator.

    Args:
        shape: ``(C, H, W)``.
        oversample: Padded side / image side (>= 1; default 2).
        generator: Source of the seed of the initial estimate's random phase.
        task: Canonical task string.
        hio_iters: HIO iterations of :meth:`initial_estimate`.
        er_iters: Error-reduction iterations of :meth:`initial_estimate`.
        beta: HIO feedback parameter.
    """

    def __init__(
        self,
        shape: Sequence[int],
        oversample: float = 2.0,
        generator: torch.Generator | None = None,
        task: str = "phase-retrieval:2.0",
        *,
        hio_iters: int = 50,
        er_iters: int = 50,
        beta: float = 0.9,
    ) -> None:
        c, h, w = (int(s) for s in shape)
        if not (math.isfinite(float(oversample)) and float(oversample) >= 1.0):
            raise OperatorError(f"phase-retrieval oversampling must be a number >= 1, got {oversample}")
        self.oversample = float(oversample)
        self.pad_h = phase_padding(h, self.oversample)
        self.pad_w = phase_padding(w, self.oversample)
        super().__init__((c, h, w), (c, h + 2 * self.pad_h, w + 2 * self.pad_w), task)
        self.hio_iters = int(hio_iters)
        self.er_iters = int(er_iters)
        self.beta = float(beta)
        self.init_seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        #: Largest possible magnitude for images in [-1, 1] (the zero frequency of a constant image).
        self.max_magnitude = h * w / math.sqrt(self.y_shape[1] * self.y_shape[2])

    def params(self) -> dict[str, Any]:
        return {"oversample": self.oversample, "padding": [self.pad_h, self.pad_w], "init_seed": self.init_seed,
                "hio_iters": self.hio_iters, "er_iters": self.er_iters}

    def _pad(self, x: Tensor) -> Tensor:
        return F.pad(x, (self.pad_w, self.pad_w, self.pad_h, self.pad_h))

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        spectrum = torch.fft.fftshift(torch.fft.fft2(self._pad(x), norm="ortho"), dim=(-2, -1))
        return spectrum.abs()

    # -- measurement image: log-magnitude ------------------------------------------------------------------------
    def y_to_image(self, y: Tensor) -> Tensor:
        """``2 log(1 + y) / log(1 + max_magnitude) - 1``: the log-magnitude mapped to [-1, 1] (invertible)."""
        self._check_y(y)
        return 2.0 * torch.log1p(y.clamp_min(0.0)) / math.log1p(self.max_magnitude) - 1.0

    def image_to_y(self, img: Tensor) -> Tensor:
        """Inverse of :meth:`y_to_image` (exact up to the 8-bit rounding of a saved image)."""
        self._check(img, self.y_shape, "measurement image")
        return torch.expm1((img.clamp(-1.0, 1.0) + 1.0) / 2.0 * math.log1p(self.max_magnitude))

    # -- initial estimate: HIO + error reduction -----------------------------------------------------------------
    def initial_estimate(self, y: Tensor) -> Tensor:
        """HIO then error reduction from a fixed random phase (see the class docstring); ``[B, C, H, W]``."""
        self._check_y(y)
        mag = torch.fft.ifftshift(y, dim=(-2, -1))
        gen = torch.Generator().manual_seed(self.init_seed)
        phase = torch.rand(y.shape[1:], generator=gen, dtype=torch.float64).to(device=y.device, dtype=y.dtype)
        support = self._pad(torch.ones((1, *self.x_shape), dtype=y.dtype, device=y.device)) > 0
        g = torch.fft.ifft2(mag * torch.exp(2j * math.pi * phase), norm="ortho").real
        for k in range(self.hio_iters + self.er_iters):
            spectrum = torch.fft.fft2(g, norm="ortho")
            g_proj = torch.fft.ifft2(mag * torch.exp(1j * spectrum.angle()), norm="ortho").real
            ok = support & (g_proj.abs() <= 1.0)
            if k < self.hio_iters:
                g = torch.where(ok, g_proj, g - self.beta * g_proj)
            else:
                g = torch.where(support, g_proj.clamp(-1.0, 1.0), torch.zeros_like(g_proj))
        h, w = self.x_shape[1:]
        return g[..., self.pad_h : self.pad_h + h, self.pad_w : self.pad_w + w].clamp(-1.0, 1.0)


register_task(TaskSpec(
    name="phase-retrieval",
    doc="phase retrieval: per-channel |FFT2| of the image zero-padded to OVERSAMPLE x its side (2: 1/4 of the side "
    "padded on every side)",
    param=float, symbol="OVERSAMPLE", default=2.0, check=Range(low=1.0),
    build=lambda p, c: PhaseRetrieval(c.shape, p, c.generator, c.task),
    x_from_y=lambda p, s: (phase_side_from_padded(s[1], p), phase_side_from_padded(s[2], p)),
))
