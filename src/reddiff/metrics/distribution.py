"""Distribution metrics between two image sets: FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) on the
2048-d pool features of the FID Inception-v3, in pure PyTorch.

- Features: each image, in [0, 1], is resized to 299x299 bilinearly (no antialiasing, half-pixel centres; the rule
  of pytorch-fid), mapped to [-1, 1] and passed through :class:`~reddiff.metrics.backbones.FIDInception`.
- FID: ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2`` with unbiased covariances. The trace of the
  matrix square root is taken from the eigenvalues of the symmetric ``S1^1/2 S2 S1^1/2`` in float64 (clipped at
  0), which stays exact for rank-deficient covariances (fewer images than 2048) where ``sqrtm(S1 S2)`` needs an
  ad-hoc offset.
- KID: the unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random
  subsets of ``min(n1, n2, subset_size)`` images from each side, with its standard deviation over the subsets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import FIDInception
from .weights import find_weights, load_into

__all__ = ["InceptionFeatures", "KID_SUBSETS", "KID_SUBSET_SIZE", "fid_from_features", "frechet_distance",
           "kid_from_features"]

#: The feature network's input side.
INCEPTION_SIZE = 299
#: KID's defaults in clean-fid and torch-fidelity: 100 subsets of at most 1000 images.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


class InceptionFeatures(nn.Module):
    """Images (``[B, 3, H, W]`` in [-1, 1]) -> FID pool features ``[B, 2048]``.

    Args:
        weights: the ``pt_inception-2015-12-05`` file, or None for random weights (tests).
    """

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        if weights is not None:
            with torch.device("meta"):
                self.net = FIDInception()
            load_into(self.net, weights, "the FID Inception-v3 (pt_inception-2015-12-05)")
        else:
            self.net = FIDInception()
        self.eval().requires_grad_(False)

    @classmethod
    def published(cls) -> InceptionFeatures:
        """With the published weights found locally.

        Raises:
            CheckpointError: the file is missing (the message says how to get it).
        """
        from .registry import require

        require("fid", ("inception-fid",))
        return cls(str(find_weights("inception-fid")))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"Inception features need [B, 3, H, W] RGB images, got {tuple(x.shape)}")
        unit = (x + 1) / 2
        unit = F.interpolate(unit, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.net.pool3(2 * unit - 1)


def _stats(f: Tensor) -> tuple[Tensor, Tensor]:
    f = f.to(torch.float64)
    if f.shape[0] < 2:
        raise ValueError("FID needs at least two images on each side")
    return f.mean(0), torch.cov(f.T)


def frechet_distance(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    """The Fréchet distance between N(mu1, s1) and N(mu2, s2), in float64.

    Args:
        mu1, mu2: means ``[d]``.
        s1, s2: covariances ``[d, d]`` (symmetric positive semi-definite).
    """
    mu1, mu2, s1, s2 = (t.to(torch.float64) for t in (mu1, mu2, s1, s2))
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    evals, evecs = torch.linalg.eigh(s1)
    root1 = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    middle = root1 @ s2 @ root1
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * trace_root
    return float(value.clamp_min(0))


def fid_from_features(f1: Tensor, f2: Tensor) -> float:
    """FID between two feature sets ``[n1, d]`` and ``[n2, d]`` (unbiased covariances, as pytorch-fid)."""
    return frechet_distance(*_stats(f1), *_stats(f2))


def _mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m = x.shape[0]
    off = m * (m - 1)
    return (kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off - 2 * kxy.mean()


def kid_from_features(f1: Tensor, f2: Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                      seed: int = 0) -> tuple[float, float]:
    """KID between two feature sets: (mean, standard deviation) of the unbiased MMD^2 over random subsets.

    Args:
        f1, f2: features ``[n1, d]``, ``[n2, d]``.
        subsets: how many subsets to draw.
        subset_size: their size (capped at ``min(n1, n2)``; at least 2).
        seed: seed of the subset draws (the result is deterministic).
    """
    f1, f2 = f1.to(torch.float64), f2.to(torch.float64)
    m = min(f1.shape[0], f2.shape[0], subset_size)
    if m < 2:
        raise ValueError("KID needs at least two images on each side")
    gen = torch.Generator().manual_seed(seed)
    values = torch.stack([
        _mmd2_unbiased(f1[torch.randperm(f1.shape[0], generator=gen)[:m]],
                       f2[torch.randperm(f2.shape[0], generator=gen)[:m]])
        for _ in range(subsets)
    ])
    return float(values.mean()), float(values.std(unbiased=False)) if subsets > 1 else 0.0
