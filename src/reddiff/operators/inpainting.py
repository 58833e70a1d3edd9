"""Inpainting operator and mask generators.

Masks are boolean ``[H, W]`` tensors with ``True`` (1) = observed, ``False`` (0) = missing; the same mask is
applied to every channel. Every random choice is drawn from the caller's ``torch.Generator`` (``None`` uses
torch's default generator, i.e. not reproducible unless the caller seeded it).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import SelectionOperator
from reddiff.operators.registry import BuildContext, TaskSpec, register_task
from reddiff.params import Range

__all__ = [
    "Inpainting",
    "box_mask",
    "center_mask",
    "half_mask",
    "random_mask",
    "freeform_mask",
    "load_mask",
    "mask_sha256",
]


def mask_sha256(mask: Tensor) -> str:
    """SHA-256 of a mask (its shape and its 0/1 bytes in row-major order), for run records."""
    m = mask.detach().to("cpu", torch.bool).contiguous()
    digest = hashlib.sha256(f"{tuple(m.shape)}".encode())
    digest.update(m.numpy().astype(np.uint8).tobytes())
    return digest.hexdigest()


class Inpainting(SelectionOperator):
    """Keep the observed pixels: ``y = x[:, :, mask]`` flattened to ``[B, C * n_observed]``.

    ``y`` holds the observed entries only (channel-major: all observed pixels of channel 0, then channel 1, ...),
    so a mean over ``y`` averages over observed pixels only.

    SVD: ``U = I``, singular values ``ones(C * n_observed)``; ``Vt(x)`` permutes ``x`` to
    ``[observed entries (channel-major, row-major pixels)..., missing entries (same order)...]`` (``[B, C*H*W]``),
    so its first ``r = C * n_observed`` entries equal ``y``.

    Args:
        mask: ``[H, W]`` (or ``[1, H, W]``) mask, nonzero/True = observed.
        channels: Number of channels ``C``.
        task: Canonical task string.
        extra_params: Extra JSON-serialisable entries for :meth:`params` (e.g. the box position).

    Raises:
        OperatorError: If the mask is not 2-D or observes no pixel.
    """

    masks_image = True

    def __init__(
        self,
        mask: Tensor,
        channels: int = 3,
        task: str = "inpaint-mask",
        extra_params: dict[str, Any] | None = None,
    ) -> None:
        mask = torch.as_tensor(mask)
        if mask.dim() == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.dim() != 2:
            raise OperatorError(f"inpainting mask must have shape [H, W], got [{', '.join(map(str, mask.shape))}]")
        mask = mask.detach().to("cpu") != 0
        h, w = mask.shape
        flat = mask.flatten()
        n_obs = int(flat.sum())
        if n_obs == 0:
            raise OperatorError("inpainting mask observes no pixel (it is all black/0); 1 = observed")
        c = int(channels)
        super().__init__((c, h, w), (c * n_obs,), task)
        self.register_buffer("mask", mask)
        self.register_buffer("obs_idx", torch.nonzero(flat).flatten())
        self.register_buffer("miss_idx", torch.nonzero(~flat).flatten())
        self.register_buffer("_s", torch.ones(c * n_obs, dtype=torch.float64))
        self._extra = dict(extra_params or {})
        self._sha = mask_sha256(mask)

    @property
    def n_observed(self) -> int:
        """Number of observed pixels per channel."""
        return int(self.obs_idx.numel())

    def params(self) -> dict[str, Any]:
        h, w = self.x_shape[1:]
        n_miss = h * w - self.n_observed
        out: dict[str, Any] = {
            "n_observed": self.n_observed,
            "n_missing": n_miss,
            "fraction_missing": n_miss / (h * w),
            "mask_sha256": self._sha,
        }
        out.update(self._extra)
        return out

    def singulars(self) -> Tensor:
        return self._s

    def _gather(self, x: Tensor, idx: Tensor) -> Tensor:
        return x.flatten(2)[:, :, idx].flatten(1)

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return torch.cat([self._gather(x, self.obs_idx), self._gather(x, self.miss_idx)], dim=1)

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        self._check(z, (self.n,), "spectral vector")
        c, h, w = self.x_shape
        b = z.shape[0]
        r = self.r
        out = z.new_zeros(b, c, h * w)
        out[:, :, self.obs_idx] = z[:, :r].reshape(b, c, -1)
        out[:, :, self.miss_idx] = z[:, r:].reshape(b, c, -1)
        return out.view(b, c, h, w)
        return z

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        return self._gather(x, self.obs_idx)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        """Scatter the observed entries into a zero image."""
        self._check_y(y)
        c, h, w = self.x_shape
        out = y.new_zeros(y.shape[0], c, h * w)
        out[:, :, self.obs_idx] = y.reshape(y.shape[0], c, -1)
        return out.view(y.shape[0], c, h, w)

    def A_dagger(self, y: Tensor, **kwargs: object) -> Tensor:  # noqa: N802
        """Closed form: ``A A^T = I``, so ``A^+ = A^T`` (missing pixels set to 0)."""
        return self.A_adjoint(y)

    def y_to_image(self, y: Tensor) -> Tensor:
        """Observed pixels scattered into a full ``[B, C, H, W]`` image, missing pixels 0 (mid-grey)."""
        return self.A_adjoint(y)

    def classical_estimate(self, y: Tensor) -> Tensor:
        """Missing pixels filled by normalised Gaussian averaging of the observed ones (a prior-free start)."""
        from reddiff.operators.classical import normalized_convolution_fill

        return normalized_convolution_fill(self.A_adjoint(y), self.mask)

    def image_to_y(self, img: Tensor) -> Tensor:
        """Gather the observed pixels of a full ``[B, C, H, W]`` image (missing pixels are ignored).

        Raises:
            OperatorError: If ``img`` is not ``[B, C, H, W]`` with this operator's ``C, H, W``.
        """
        self._check(img, self.x_shape, "measurement image")
        return self._gather(img, self.obs_idx)


# -- mask generators ------------------------------------------------------------------------------------------------


def _hw(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2 or any(int(s) < 1 for s in shape[-2:]):
        raise OperatorError(f"mask shape must end with (H, W), positive, got {tuple(shape)}")
    return int(shape[-2]), int(shape[-1])


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def box_mask(shape: tuple[int, ...], generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, int]]:
    """A missing ``H/2 x W/2`` box at a random place, at least ``H/16`` (rows) / ``W/16`` (columns) from the border.

    For 256x256 images this is the 128x128 box with a 16 px margin of the literature.

    Args:
        shape: ``(..., H, W)``.
        generator: Source of the box position.

    Returns:
        ``(mask, box)`` where ``mask`` is ``[H, W]`` bool (True = observed) and ``box`` is
        ``{"top", "left", "height", "width"}``.
    """
    h, w = _hw(shape)
    bh, bw = h // 2, w // 2
    mh, mw = h // 16, w // 16
    top = _randint(mh, h - mh - bh, generator)
    left = _randint(mw, w - mw - bw, generator)
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[top : top + bh, left : left + bw] = False
    return mask, {"top": top, "left": left, "height": bh, "width": bw}


def center_mask(shape: tuple[int, ...]) -> Tensor:
    """The centred ``H/2 x W/2`` box missing (``[H, W]`` bool, True = observed)."""
    h, w = _hw(shape)
    bh, bw = h // 2, w // 2
    top, left = (h - bh) // 2, (w - bw) // 2
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[top : top + bh, left : left + bw] = False
    return mask


def half_mask(shape: tuple[int, ...]) -> Tensor:
    """The right half missing: columns ``W // 2`` onwards (``[H, W]`` bool, True = observed)."""
    h, w = _hw(shape)
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[:, w // 2 :] = False
    return mask


def random_mask(shape: tuple[int, ...], fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """Exactly ``round(fraction * H * W)`` pixels missing, chosen uniformly by ``torch.randperm``.

    Args:
        shape: ``(..., H, W)``.
        fraction: Fraction of missing pixels, ``0 < fraction < 1``.
        generator: Source of the permutation.

    Returns:
        ``[H, W]`` bool mask, True = observed.
    """
    h, w = _hw(shape)
    if not 0.0 < float(fraction) < 1.0:
        raise OperatorError(f"random mask fraction must be in (0, 1), got {fraction}")
    n_miss = int(round(float(fraction) * h * w))
    mask = torch.ones(h * w, dtype=torch.bool)
    mask[torch.randperm(h * w, generator=generator)[:n_miss]] = False
    return mask.view(h, w)


def _stroke_segment(ys: Tensor, xs: Tensor, p0: tuple[float, float], p1: tuple[float, float], radius: float) -> Tensor:
    """Pixels whose centre lies within ``radius`` of the segment ``p0 -> p1`` (coordinates in pixels)."""
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    len2 = dy * dy + dx * dx
    if len2 > 0:
        t = (((ys - y0) * dy + (xs - x0) * dx) / len2).clamp(0.0, 1.0)
    else:
        t = torch.zeros_like(ys)
    d2 = (ys - (y0 + t * dy)) ** 2 + (xs - (x0 + t * dx)) ** 2
    return d2 <= radius * radius


def freeform_mask(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    min_fraction: float = 0.2,
    max_fraction: float = 0.3,
) -> Tensor:
    """Free-form brush strokes covering between ``min_fraction`` and ``max_fraction`` of the pixels.

    A target fraction is drawn uniformly in ``[min_fraction, max_fraction]``; strokes are then added until the
    missing fraction reaches it. A stroke is a random walk of 2-6 thick line segments: start uniform in the image,
    heading uniform, each segment turns by up to +-60 degrees (inertia), length ``U(0.08, 0.25) * S`` and brush
    radius ``U(0.02, 0.05) * S`` with ``S = max(H, W)`` (so the look is resolution independent; the radius is at
    least half a pixel). A segment that would push the missing fraction above ``max_fraction`` is dropped and
    redrawn smaller (for images too small to hit the range the loop gives up after 1000 dropped segments).

    Args:
        shape: ``(..., H, W)``.
        generator: Source of every random choice.
        min_fraction: Lower bound of the missing fraction.
        max_fraction: Upper bound of the missing fraction.

    Returns:
        ``[H, W]`` bool mask, True = observed.
    """
    h, w = _hw(shape)
    size = float(max(h, w))
    ys = torch.arange(h, dtype=torch.float64).view(h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float64).view(1, w) + 0.5
    missing = torch.zeros(h, w, dtype=torch.bool)
    total = h * w

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))

    target = uniform(min_fraction, max_fraction)
    scale = 1.0
    rejected = 0
    while int(missing.sum()) < target * total and rejected < 1000:
        y, x = uniform(0.0, h), uniform(0.0, w)
        angle = uniform(0.0, 2.0 * math.pi)
        n_seg = _randint(2, 6, generator)
        for _ in range(n_seg):
            angle += uniform(-math.pi / 3.0, math.pi / 3.0)
            length = uniform(0.08, 0.25) * size * scale
            radius = max(0.5, uniform(0.02, 0.05) * size * scale)
            ny = min(max(y + length * math.sin(angle), 0.0), float(h))
            nx = min(max(x + length * math.cos(angle), 0.0), float(w))
            candidate = missing | _stroke_segment(ys, xs, (y, x), (ny, nx), radius)
            n_new = int(candidate.sum())
            if n_new > max_fraction * total:
                rejected += 1
                if rejected % 8 == 0:
                    scale *= 0.5
                break
            missing = candidate
            y, x = ny, nx
            if n_new >= target * total:
                break
    return ~missing


def load_mask(path: str | Path, shape: tuple[int, ...]) -> Tensor:
    """Load a user mask from an image file.

    The image is converted to 8-bit grey. White (grey value >= 128) = observed, black = missing; an image whose
    values are all 0 or 1 (a 0/1 mask saved as PNG) is read as nonzero = observed.

    Args:
        path: Image file (any format Pillow reads).
        shape: ``(..., H, W)`` of the images the mask is for.

    Returns:
        ``[H, W]`` bool mask, True = observed.

    Raises:
        OperatorError: If the file cannot be read or its size differs from ``(H, W)``.
    """
    from PIL import Image, UnidentifiedImageError

    h, w = _hw(shape)
    p = Path(path)
    try:
        with Image.open(p) as im:
            grey = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise OperatorError(f"mask file not found: {p}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise OperatorError(f"cannot read mask image {p}: {exc}") from None
    if grey.shape != (h, w):
        raise OperatorError(
            f"mask is {grey.shape[0]}x{grey.shape[1]} but the image is {h}x{w} (mask file {p}; sizes are HxW)"
        )
    observed = grey > 0 if int(grey.max(initial=0)) <= 1 else grey >= 128
    return torch.from_numpy(observed.copy())


# -- tasks --------------------------------------------------------------------------------------------------------


def _inpaint(mask: Tensor, c: BuildContext, extra: dict[str, Any] | None = None) -> Inpainting:
    return Inpainting(mask, channels=c.shape[0], task=c.task, extra_params=extra)


def _build_box(_p: Any, c: BuildContext) -> Inpainting:
    mask, box = box_mask(c.shape, c.generator)
    return _inpaint(mask, c, {"box": box})


def _build_mask(path: str | None, c: BuildContext) -> Inpainting:
    mask = load_mask(path, c.shape) if path is not None else c.mask
    if mask is None:
        raise OperatorError("inpaint-mask needs a mask: use inpaint-mask:PATH or pass mask=")
    mask = torch.as_tensor(mask)
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2 or tuple(mask.shape) != c.shape[1:]:
        got = "x".join(map(str, mask.shape))
        raise OperatorError(f"mask is {got} but the image is {c.shape[1]}x{c.shape[2]}")
    return _inpaint(mask, c, {"mask_file": str(path)} if path is not None else None)


register_task(TaskSpec(
    name="inpaint-box",
    doc="inpainting: an H/2 x W/2 box missing at a random place, H/16 margin (128x128, 16 px for 256x256)",
    build=_build_box,
))
register_task(TaskSpec(name="inpaint-center", doc="inpainting: the centred H/2 x W/2 box missing",
                       build=lambda _p, c: _inpaint(center_mask(c.shape), c)))
register_task(TaskSpec(name="inpaint-half", doc="inpainting: the right half of the image missing",
                       build=lambda _p, c: _inpaint(half_mask(c.shape), c)))
register_task(TaskSpec(
    name="inpaint-random", doc="inpainting: a fraction P of the pixels missing at random",
    param=float, symbol="P", default=0.8, check=Range(low=0.0, high=1.0, low_open=True, high_open=True),
    build=lambda p, c: _inpaint(random_mask(c.shape, p, c.generator), c, {"fraction": p}),
))
register_task(TaskSpec(name="inpaint-freeform", doc="inpainting: random free-form brush strokes, 20-30% of the pixels "
                       "missing", build=lambda _p, c: _inpaint(freeform_mask(c.shape, c.generator), c)))
register_task(TaskSpec(
    name="inpaint-mask", doc="inpainting with your mask (an image file, white = observed, black = missing; or mask=)",
    param=str, symbol="PATH", build=_build_mask,
))
