"""Image quality metrics.

- :func:`psnr`, :func:`ssim` (Wang et al. 2004, Gaussian window) on [0, 1] images, defined here;
- :class:`LPIPS` (AlexNet or VGG-16) in :mod:`.perceptual`, FID and KID on Inception features in
  :mod:`.distribution`, all in pure PyTorch on networks defined in :mod:`.backbones`, with published weights found
  or fetched by :mod:`.weights`; :mod:`.registry` says which metrics are available here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["METRICS", "LPIPS", "InceptionFeatures", "available_metrics", "fetch_weights", "fid_from_features",
           "frechet_distance", "kid_from_features", "psnr", "ssim"]


def _as_batch(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    squeeze = a.dim() == 3
    if squeeze:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if a.dim() != 4:
        raise ValueError(f"expected [C, H, W] or [B, C, H, W] images, got shape {tuple(a.shape)}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype), b.to(dtype), squeeze


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, per image.

    Args:
        a: estimate, ``[C, H, W]`` or ``[B, C, H, W]`` in [0, 1].
        b: reference, same shape.
        data_range: the dynamic range (1 for [0, 1] images).

    Returns:
        A scalar tensor for one image, ``[B]`` for a batch (``inf`` where the images are equal).
    """
    a, b, squeeze = _as_batch(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    out = 10 * torch.log10(data_range**2 / mse)
    return out[0] if squeeze else out


def _gaussian_window(sigma: float, truncate: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with an 11-tap Gaussian window (σ = 1.5), per image.

    Matches ``skimage.metrics.structural_similarity(a, b, data_range=1, channel_axis=0, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``: local statistics with reflect padding, the SSIM map averaged over
    the interior (a border of the window radius is dropped) and over channels.

    Args:
        a: estimate, ``[C, H, W]`` or ``[B, C, H, W]`` in [0, 1]; H and W must be at least 11.
        b: reference, same shape.
        data_range: the dynamic range.
        sigma: the Gaussian window's standard deviation.

    Returns:
        A scalar tensor for one image, ``[B]`` for a batch.
    """
    a, b, squeeze = _as_batch(a, b)
    c = a.shape[1]
    g = _gaussian_window(sigma, 3.5, a.dtype, a.device)
    radius = (g.numel() - 1) // 2
    if min(a.shape[-2:]) < 2 * radius + 1:
        raise ValueError(f"SSIM needs images larger than {2 * radius + 1} pixels, got {tuple(a.shape[-2:])}")

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    s = s[..., radius:-radius, radius:-radius]
    out = s.flatten(1).mean(1)
    return out[0] if squeeze else out



from .distribution import InceptionFeatures, fid_from_features, frechet_distance, kid_from_features  # noqa: E402
from .perceptual import LPIPS  # noqa: E402
from .registry import METRICS, available_metrics  # noqa: E402
from .weights import fetch_weights  # noqa: E402
