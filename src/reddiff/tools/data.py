"""Offline training images and random-crop sampling for ``reddiff train``.

The built-in training set uses only pictures that ship with scikit-image and scikit-learn (no downloads). The
images named in :data:`HELD_OUT` (and every other image) are never trained on: they are kept for evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ReddiffError

__all__ = [
    "TRAIN_SKIMAGE",
    "TRAIN_SKLEARN",
    "HELD_OUT",
    "builtin_training_images",
    "held_out_images",
    "folder_images",
    "dead_leaves",
    "CropSampler",
]

#: scikit-image pictures used for training (``stereo_motorcycle`` contributes both views).
TRAIN_SKIMAGE = (
    "rocket",
    "stereo_motorcycle",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "clock",
    "page",
    "text",
    "cell",
)
#: scikit-learn's ``load_sample_images()`` pictures used for training.
TRAIN_SKLEARN = ("china", "flower")
#: Never trained on, never used to choose a hyperparameter: the evaluation images.
HELD_OUT = ("astronaut", "chelsea", "coffee")


def _rgb_uint8(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        lo, hi = float(a.min()), float(a.max())
        a = np.clip((a - lo) / max(hi - lo, 1e-12) * 255 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def builtin_training_images() -> list[tuple[str, np.ndarray]]:
    """The built-in training set as ``(name, uint8 [H, W, 3])`` pairs (grayscale pictures become 3-channel).

    Raises:
        ReddiffError: when scikit-image or scikit-learn is not installed (``pip install reddiff[data]``).
    """
    try:
        import skimage.data as skd
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise ReddiffError("the built-in training set needs scikit-image and scikit-learn: "
                           "pip install 'reddiff[data]'") from None
    out: list[tuple[str, np.ndarray]] = []
    for name in TRAIN_SKIMAGE:
        value = getattr(skd, name)()
        if name == "stereo_motorcycle":
            out += [("stereo_motorcycle_left", _rgb_uint8(value[0])), ("stereo_motorcycle_right", _rgb_uint8(value[1]))]
        else:
            out.append((name, _rgb_uint8(value)))
    samples = load_sample_images()
    for fname, img in zip(samples.filenames, samples.images):
        stem = Path(fname).stem
        if stem in TRAIN_SKLEARN:
            out.append((stem, _rgb_uint8(img)))
    return out


def held_out_images() -> list[tuple[str, np.ndarray]]:
    """The held-out evaluation pictures ``astronaut``, ``chelsea``, ``coffee`` as uint8 ``[H, W, 3]``."""
    import skimage.data as skd

    return [(name, _rgb_uint8(getattr(skd, name)())) for name in HELD_OUT]


def folder_images(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """Every image of a folder as ``(name, uint8 [H, W, 3])``."""
    from ..io import list_images, load_image, to_uint8

    files = list_images(path)
    return [(f.stem, to_uint8(load_image(f))) for f in files]


def dead_leaves(size: int, rng: np.random.Generator, r_min: float = 1.5, r_max: float | None = None,
                sigma: float = 3.0) -> np.ndarray:
    """A dead-leaves image (occluding disks with power-law radii, ``p(r) ~ r^-sigma``): a scale-invariant
    model of natural-image statistics, used to add edges and flat regions at every scale to small training sets.

    Args:
        size: side of the square image.
        rng: numpy generator (all randomness).
        r_min: smallest disk radius in pixels.
        r_max: largest radius (default ``size / 3``).
        sigma: power-law exponent.

    Returns:
        uint8 ``[size, size, 3]``.
    """
    r_max = size / 3 if r_max is None else r_max
    img = np.zeros((size, size, 3), np.float32)
    covered = np.zeros((size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    # inverse-CDF sampling of r ~ r^-sigma on [r_min, r_max]
    a, b = r_min ** (1 - sigma), r_max ** (1 - sigma)
    for _ in range(20000):
        r = (a + (b - a) * rng.random()) ** (1 / (1 - sigma))
        cx, cy = rng.random(2) * size
        x0, x1 = max(int(cx - r), 0), min(int(math.ceil(cx + r)) + 1, size)
        y0, y1 = max(int(cy - r), 0), min(int(math.ceil(cy + r)) + 1, size)
        if x0 >= x1 or y0 >= y1:
            continue
        disk = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2 <= r * r
        fresh = disk & ~covered[y0:y1, x0:x1]  # later disks lie underneath earlier ones
        if fresh.any():
            color = rng.random(3) ** 1.5 * 255
            img[y0:y1, x0:x1][fresh] = color
            covered[y0:y1, x0:x1] |= fresh
        if covered.all():
            break
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


class CropSampler:
    """Random training crops: an image chosen uniformly, a random scale in ``scale`` (mild downscaling), a random
    position, random flips and 90° rotations. All randomness comes from one numpy generator whose state can be
    saved and restored (:meth:`state_dict`), so a resumed run continues with exactly the same crops.

    Args:
        images: uint8 ``[H, W, 3]`` arrays.
        crop: side of the square crops.
        seed: seed of the generator.
        scale: range of the rescaling factor (1 = native resolution, 0.5 = half size).
        extra: additional images (e.g. dead leaves) drawn with probability ``extra_prob``.
        extra_prob: probability of drawing a crop from ``extra``.
    """

    def __init__(self, images: list[np.ndarray], crop: int, seed: int = 0, scale: tuple[float, float] = (0.5, 1.0),
                 extra: list[np.ndarray] | None = None, extra_prob: float = 0.0) -> None:
        if not images:
            raise ReddiffError("no training images")
        too_small = [i for i, im in enumerate(images) if min(im.shape[:2]) < crop]
        if too_small:
            raise ReddiffError(f"{len(too_small)} training image(s) are smaller than the {crop}px crop; use --crop "
                               f"{min(min(im.shape[:2]) for im in images)} or less")
        self.images = [torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1) for im in images]
        self.extra = [torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1) for im in (extra or [])]
        self.crop = int(crop)
        self.scale = (float(scale[0]), float(scale[1]))
        self.extra_prob = float(extra_prob) if self.extra else 0.0
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        """The generator state (JSON-compatible)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        self.rng.bit_generator.state = state["bit_generator"]

    def _one(self) -> torch.Tensor:
        rng = self.rng
        pool = self.extra if self.extra and rng.random() < self.extra_prob else self.images
        img = pool[int(rng.integers(len(pool)))]
        h, w = img.shape[1:]
        s = float(rng.uniform(*self.scale))
        side = min(int(round(self.crop / s)), h, w)
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        patch = img[:, top : top + side, left : left + side].float().div(255)
        if side != self.crop:
            patch = F.interpolate(patch[None], size=(self.crop, self.crop), mode="bilinear", antialias=True,
                                  align_corners=False)[0]
        if rng.random() < 0.5:
            patch = patch.flip(2)
        k = int(rng.integers(4))
        if k:
            patch = torch.rot90(patch, k, dims=(1, 2))
        return patch.clamp(0, 1) * 2 - 1

    def sample(self, batch: int) -> torch.Tensor:
        """``[batch, 3, crop, crop]`` in [-1, 1]."""
        return torch.stack([self._one() for _ in range(batch)])
