"""Classical restorations used as starting points (RED-diff's ``init="classical"``).

These are quick, prior-free estimates: RED-diff then refines them with the diffusion prior and the exact data term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalized_convolution_fill", "upsample_back_project"]


def _gauss(sigma: float, like: Tensor) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _blur(x: Tensor, sigma: float) -> Tensor:
    g = _gauss(sigma, x)
    c, r = x.shape[1], (g.numel() - 1) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def normalized_convolution_fill(image: Tensor, mask: Tensor, sigma: float = 1.0, max_levels: int = 12) -> Tensor:
    """Fill missing pixels by normalised Gaussian averaging of the observed ones, widening the Gaussian where too
    few pixels are observed nearby (so random masks and large boxes both get filled); observed pixels are kept.

    Args:
        image: ``[B, C, H, W]`` with anything at missing pixels.
        mask: ``[H, W]`` or broadcastable, 1 = observed.
        sigma: the narrowest Gaussian's standard deviation in pixels.
        max_levels: how many times the Gaussian may double.
    """
    m = mask.to(image.dtype).expand(image.shape[0], 1, *image.shape[-2:])
    filled = torch.zeros_like(image)
    done = torch.zeros_like(m, dtype=torch.bool)
    s = sigma
    for _ in range(max_levels):
        if s > 2 * max(image.shape[-2:]):
            break
        num, den = _blur(image * m, s), _blur(m, s)
        ok = (den > 0.05) & ~done
        filled = torch.where(ok, num / den.clamp_min(1e-12), filled)
        done = done | ok
        if bool(done.all()):
            break
        s *= 2
    mean = (image * m).sum(dim=(-2, -1), keepdim=True) / m.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
    filled = torch.where(done, filled, mean.expand_as(filled))
    return torch.where(m > 0, image, filled)


def upsample_back_project(op, y: Tensor, iterations: int = 1) -> Tensor:
    """Bicubic upsampling of a low-resolution measurement image, then back-projection onto ``A x = y``
    (``x <- x + A^+(y - A x)``), the classical consistent super-resolution start."""
    small = op.y_to_image(y)
    x = F.interpolate(small, size=tuple(op.x_shape[-2:]), mode="bicubic", align_corners=False)
    for _ in range(iterations):
        x = x + op.A_dagger(y - op.A(x))
    return x
