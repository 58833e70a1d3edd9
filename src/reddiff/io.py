"""Files and pixel ranges: the only place that converts between image files, [0, 1] and [-1, 1].

Inside reddiff, pixels are in [-1, 1]. Files are 8-bit PNG/JPEG/... read with Pillow. Every write is atomic
(written to a temporary file beside the target, then renamed), so an interrupted run never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ReddiffError

__all__ = [
    "HEAT_COLOURS",
    "IMAGE_SUFFIXES",
    "heat_map",
    "save_animation",
    "to_unit",
    "from_unit",
    "load_image",
    "save_image",
    "list_images",
    "write_json",
    "json_safe",
    "dumps",
    "as_saved",
    "atomic_path",
    "make_grid",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2 - 1


def list_images(path: str | Path) -> list[Path]:
    """The image files at ``path``: the file itself, or the images of a folder sorted by name.

    Raises:
        ReddiffError: when the path does not exist or a folder holds no images.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ReddiffError(f"no images in folder {p} (accepted: {', '.join(IMAGE_SUFFIXES)})")
        return files
    if not p.exists():
        raise ReddiffError(f"no such file or folder: {p}")
    return [p]


def load_image(
    path: str | Path, channels: int | None = 3, notices: list[str] | None = None
) -> torch.Tensor:
    """Read an image file as a ``[1, C, H, W]`` float32 tensor in [-1, 1].

    Args:
        path: the image file.
        channels: 3 (RGB: grayscale is replicated, alpha dropped), 1 (luminance), or None (keep 1 or 3 as stored).
        notices: if given, receives a one-line notice for each conversion made (grayscale -> RGB, RGBA -> RGB, ...).

    Raises:
        ReddiffError: missing, unreadable or non-image file.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ReddiffError(f"no such image file: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)
            if has_alpha:
                if notices is not None:
                    notices.append(f"{p.name}: dropped the alpha channel")
                im2 = im.convert("L") if mode == "LA" else im.convert("RGBA").convert("RGB")
            elif mode in ("L", "1", "I", "I;16", "F"):
                im2 = im.convert("L") if mode in ("1", "L") else _to_8bit_gray(im)
            else:
                im2 = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        kind = exc.__class__.__name__
        raise ReddiffError(f"cannot read {p} as an image ({kind}); use PNG, JPEG, BMP or TIFF") from None
    arr = np.asarray(im2, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if channels == 3 and arr.shape[2] == 1:
        if notices is not None:
            notices.append(f"{p.name}: grayscale image converted to RGB")
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 1 and arr.shape[2] == 3:
        if notices is not None:
            notices.append(f"{p.name}: RGB image converted to grayscale (channel mean)")
        arr = arr.mean(axis=2, keepdims=True)
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0)
    return from_unit(x)


def _to_8bit_gray(im: Any) -> Any:
    from PIL import Image

    a = np.asarray(im, dtype=np.float64)
    hi = 65535.0 if a.max() > 255 else 255.0
    return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """A ``[C, H, W]`` or ``[1, C, H, W]`` tensor in [-1, 1] as an ``[H, W, C]`` uint8 array."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError("to_uint8 takes one image")
        x = x[0]
    arr = to_unit(x.detach().float().cpu()).permute(1, 2, 0).numpy()
    return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)


def as_saved(x: torch.Tensor) -> torch.Tensor:
    """One image in [-1, 1] exactly as :func:`save_image` writes it and :func:`load_image` reads it back (8 bits per
    channel), ``[1, C, H, W]`` float32: what metrics of a saved estimate must be computed on."""
    arr = torch.from_numpy(np.ascontiguousarray(to_uint8(x)).astype(np.float32) / 255.0)
    return from_unit(arr.permute(2, 0, 1).unsqueeze(0))


def save_image(x: torch.Tensor, path: str | Path) -> Path:
    """Write one image in [-1, 1] (``[C, H, W]`` or ``[1, C, H, W]``, C = 1 or 3) atomically; format from suffix."""
    from PIL import Image

    arr = to_uint8(x)
    img = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
    target = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(target.suffix.lower(), "PNG")
    with atomic_path(target) as tmp:
        img.save(tmp, format=fmt)
    return target


def save_animation(frames: Sequence[torch.Tensor], path: str | Path, frame_ms: int = 80,
                   hold_ms: int = 1200, scale: int = 1) -> Path:
    """Write images in [-1, 1] (each ``[C, H, W]`` or ``[1, C, H, W]``) as a looping GIF atomically, the last one
    held for ``hold_ms``; ``scale`` enlarges each frame (nearest neighbour) so small images stay visible."""
    from PIL import Image

    if not frames:
        raise ValueError("an animation needs at least one frame")
    pics = []
    for f in frames:
        arr = to_uint8(f)
        img = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
        pics.append(img)
    durations = [frame_ms] * (len(pics) - 1) + [hold_ms]
    target = Path(path)
    with atomic_path(target) as tmp:
        pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:], duration=durations, loop=0,
                     optimize=False)
    return target


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (a PSNR of identical images, ...) replaced by None, and tensors, NumPy
    scalars, paths, tuples and sets turned into JSON types, so that the output is standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [json_safe(v) for v in obj]
    if isinstance(obj, str | int | bool) or obj is None:
        return obj
    return json_safe(_json_default(obj))


def dumps(obj: Any, indent: int | None = None) -> str:
    """Standard JSON text of ``obj`` (see :func:`json_safe`; never ``NaN`` or ``Infinity``)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented standard JSON atomically."""
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(dumps(obj, indent=2) + "\n")
    return target


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


#: Anchor colours (0..1 RGB) of :func:`heat_map`, evenly spaced from 0 to the maximum: black, purple, red,
#: orange, pale yellow (monotone in lightness, readable in grey print).
HEAT_COLOURS = ((0.0, 0.0, 0.02), (0.34, 0.06, 0.43), (0.73, 0.21, 0.33), (0.98, 0.55, 0.04), (0.99, 1.0, 0.64))


def heat_map(values: torch.Tensor, vmax: float | None = None) -> torch.Tensor:
    """Colour ``[1, 1, H, W]`` non-negative values (e.g. a spread map) from black (0) to pale yellow (``vmax``,
    default: the largest value); returns ``[1, 3, H, W]`` in [-1, 1]."""
    v = values.detach().float().cpu()
    top = float(v.max()) if vmax is None else float(vmax)
    u = (v / top if top > 0 else torch.zeros_like(v)).clamp(0, 1) * (len(HEAT_COLOURS) - 1)
    lo = u.floor().clamp(max=len(HEAT_COLOURS) - 2).long()
    frac = u - lo
    table = torch.tensor(HEAT_COLOURS)  # [K, 3]
    rgb = table[lo[0, 0]] * (1 - frac[0, 0, ..., None]) + table[lo[0, 0] + 1] * frac[0, 0, ..., None]
    return from_unit(rgb.permute(2, 0, 1)[None])


def _resize_nearest(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(img.shape[-2:]) == size:
        return img
    return torch.nn.functional.interpolate(img.unsqueeze(0), size=size, mode="nearest")[0]


@functools.cache
def _label_font() -> tuple[Any, bool]:
    """DejaVu Sans (Greek letters included) when matplotlib ships it, else Pillow's default font (Latin only)."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), 11), True
    return ImageFont.load_default(), False


def make_grid(
    images: Sequence[torch.Tensor],
    labels: Sequence[str] | None = None,
    pad: int = 4,
    label_height: int = 14,
) -> torch.Tensor:
    """Place images side by side with optional captions, as one ``[3, H', W']`` image in [-1, 1].

    Each image (``[C, H, W]`` or ``[1, C, H, W]``, C = 1 or 3, any size) is resized (nearest) to the height and
    width of the largest one, so small measurements (super-resolution) show at the estimate's scale.
    """
    from PIL import Image, ImageDraw

    tiles = [(im[0] if im.dim() == 4 else im).detach().float().cpu() for im in images]
    tiles = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in tiles]
    h = max(t.shape[1] for t in tiles)
    w = max(t.shape[2] for t in tiles)
    tiles = [_resize_nearest(t, (h, w)) for t in tiles]
    top = label_height if labels else 0
    canvas = torch.ones(3, h + top + 2 * pad, len(tiles) * (w + pad) + pad)
    for i, t in enumerate(tiles):
        x0 = pad + i * (w + pad)
        canvas[:, pad + top : pad + top + h, x0 : x0 + w] = t
    if not labels:
        return canvas
    arr = to_uint8(canvas)
    pil = Image.fromarray(arr)
    draw = ImageDraw.Draw(pil)
    font, full_unicode = _label_font()
    for i, text in enumerate(labels):
        text = str(text) if full_unicode else str(text).replace("Π", "Pi")
        draw.text((pad + i * (w + pad), 1), text[: max(4, w // 6)], fill=(0, 0, 0), font=font)
    out = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return from_unit(out)
