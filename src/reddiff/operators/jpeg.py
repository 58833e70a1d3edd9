"""JPEG compression (task ``jpeg:Q``): baseline JPEG encode + decode at quality Q, written from the standard.

The forward model follows ITU-T T.81 / JFIF and the behaviour of libjpeg (which Pillow uses), step by step:

1. pixels ``p = 127.5 (x + 1)`` clipped to [0, 255] and rounded (the encoder takes 8-bit images);
2. RGB -> YCbCr (JFIF): ``Y = 0.299 R + 0.587 G + 0.114 B``, ``Cb = 128 - 0.168736 R - 0.331264 G + 0.5 B``,
   ``Cr = 128 + 0.5 R - 0.418688 G - 0.081312 B``, rounded;
3. the image is padded by edge replication to a multiple of the MCU (16 px for colour, 8 px for grey);
4. 4:2:0 chroma subsampling: 2x2 averages, rounded with libjpeg's alternating bias (1, 2, 1, 2, ... per column);
5. level shift -128, 8x8 orthonormal DCT-II per block;
6. quantisation by the standard luminance / chrominance tables of T.81 Annex K scaled as libjpeg does
   (``scale = 5000 / Q`` for ``Q < 50``, else ``200 - 2 Q``; ``q = (base * scale + 50) // 100`` clamped to
   [1, 255]), rounding half away from zero;
7. decoding: dequantise, inverse DCT, +128, round, clip to [0, 255];
8. chroma upsampling with libjpeg's default "fancy" (triangle) filter: each output sample is
   ``(9 a + 3 b + 3 c + d) / 16`` of its four nearest input samples, with edge replication at the chroma plane's
   border and libjpeg's rounding (vertical pass exact, horizontal pass ``+8`` / ``+7`` then ``// 16``);
9. YCbCr -> RGB (``R = Y + 1.402 (Cr - 128)``, ``G = Y - 0.344136 (Cb - 128) - 0.714136 (Cr - 128)``,
   ``B = Y + 1.772 (Cb - 128)``), rounded, clipped, cropped to the image size, back to [-1, 1].

Every rounding is straight-through (forward rounds, backward identity) and every clip keeps its true gradient, so the
Jacobian is that of the linear pipeline (colour transforms, averaging, DCT, IDCT, upsampling filter) with the clips'
masks. The remaining difference to Pillow/libjpeg is arithmetic: libjpeg's integer ("islow") DCTs and fixed-point
colour tables round differently from this float implementation, which occasionally flips a quantised coefficient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from reddiff.errors import OperatorError
from reddiff.operators.base import Operator
from reddiff.operators.pointwise import round_ste, straight_through
from reddiff.operators.registry import BuildContext, TaskSpec, register_task
from reddiff.params import Range

__all__ = ["JPEG", "LUMINANCE_TABLE", "CHROMINANCE_TABLE", "quality_table", "dct_matrix"]

#: ITU-T T.81 Annex K, Table K.1 (luminance), natural (row-major) order.
LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)

#: ITU-T T.81 Annex K, Table K.2 (chrominance), natural (row-major) order.
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)

# Colour transforms (JFIF), rows = output channel.
_RGB_TO_YCC = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCC_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136, -0.714136),
    (1.0, 1.772, 0.0),
)


def quality_table(base: Sequence[Sequence[int]], quality: int) -> Tensor:
    """A quantisation table scaled to ``quality`` the way libjpeg's ``jpeg_set_quality`` does (baseline tables).

    Args:
        base: 8x8 base table (e.g. :data:`LUMINANCE_TABLE`).
        quality: 1 (worst) to 100 (best).

    Returns:
        ``[8, 8]`` float64 tensor with integer entries in [1, 255].
    """
    q = int(quality)
    if not 1 <= q <= 100:
        raise OperatorError(f"JPEG quality must be an integer from 1 to 100, got {quality}")
    scale = 5000 // q if q < 50 else 200 - 2 * q
    table = [[min(max((int(v) * scale + 50) // 100, 1), 255) for v in row] for row in base]
    return torch.tensor(table, dtype=torch.float64)


def dct_matrix(n: int = 8) -> Tensor:
    """Orthonormal DCT-II matrix ``D[k, i] = c_k cos(pi (2 i + 1) k / (2 n))`` (float64); ``D^{-1} = D^T``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def _round_half_away(v: Tensor) -> Tensor:
    """Round half away from zero (libjpeg's quantiser), straight-through."""
    return straight_through(v, torch.sign(v) * torch.floor(v.abs() + 0.5))


def _round_half_down(v: Tensor) -> Tensor:
    """Round half down (``ceil(v - 0.5)``, libjpeg's chroma conversion), straight-through."""
    return straight_through(v, torch.ceil(v - 0.5))


class JPEG(Operator):
    """JPEG encode + decode at quality ``Q`` (``y`` is the decoded image in [-1, 1], same shape as ``x``).

    See the module docstring for the exact pipeline. 3-channel images are coded as YCbCr 4:2:0, 1-channel images as
    greyscale. Sizes that are not a multiple of the MCU are padded by edge replication and cropped after decoding.

    Args:
        shape: ``(C, H, W)`` with ``C`` 1 or 3.
        quality: 1 to 100.
        task: Canonical task string.
        ste: ``True`` (default): straight-through rounding; ``False``: no rounding at all (the linear surrogate
            whose Jacobian the straight-through version uses; for tests and analysis).
    """

    measurement_is_image = True

    def __init__(self, shape: Sequence[int], quality: int = 75, task: str = "jpeg:75", *, ste: bool = True) -> None:
        super().__init__(shape, shape, task)
        c = self.x_shape[0]
        if c not in (1, 3):
            raise OperatorError(f"jpeg needs 1- or 3-channel images, got {c} channels")
        self.quality = int(quality)
        self.ste = bool(ste)
        self.register_buffer("q_luma", quality_table(LUMINANCE_TABLE, self.quality))
        self.register_buffer("q_chroma", quality_table(CHROMINANCE_TABLE, self.quality))
        self.register_buffer("dct", dct_matrix(8))
        self.register_buffer("rgb_to_ycc", torch.tensor(_RGB_TO_YCC, dtype=torch.float64))
        self.register_buffer("ycc_to_rgb", torch.tensor(_YCC_TO_RGB, dtype=torch.float64))

    def params(self) -> dict[str, Any]:
        return {"quality": self.quality, "subsampling": "4:2:0" if self.x_shape[0] == 3 else "grey",
                "upsampling": "fancy (libjpeg default)"}

    # -- rounding helpers (identity when ste=False) -------------------------------------------------------------
    def _rnd(self, v: Tensor, fn: Callable[[Tensor], Tensor] = round_ste) -> Tensor:
        return fn(v) if self.ste else v

    def _snap(self, value: Tensor, target: Tensor) -> Tensor:
        return straight_through(value, target) if self.ste else value

    # -- block transform ----------------------------------------------------------------------------------------
    def _block_code(self, plane: Tensor, table: Tensor) -> Tensor:
        """Level shift, DCT, quantise, dequantise, IDCT, unshift, round and clip one ``[B, H, W]`` plane."""
        b, h, w = plane.shape
        d = self._cast(self.dct, plane)
        q = self._cast(table, plane)
        blocks = (plane - 128.0).reshape(b, h // 8, 8, w // 8, 8)
        coef = torch.einsum("ki,bhiwj,lj->bhkwl", d, blocks, d)
        coef = self._rnd(coef / q[:, None, :], _round_half_away) * q[:, None, :]
        rec = torch.einsum("ki,bhkwl,lj->bhiwj", d, coef, d).reshape(b, h, w) + 128.0
        return self._rnd(rec).clamp(0.0, 255.0)

    def _downsample(self, plane: Tensor) -> Tensor:
        """2x2 averages with libjpeg's alternating rounding bias (1, 2, 1, 2, ... along the columns)."""
        s = F.avg_pool2d(plane[:, None], 2)[:, 0] * 4.0
        bias = torch.tensor([1.0, 2.0], dtype=plane.dtype, device=plane.device).repeat(s.shape[-1] // 2 + 1)
        bias = bias[: s.shape[-1]]
        return self._snap(s / 4.0, torch.floor((s + bias) / 4.0))

    def _upsample(self, plane: Tensor) -> Tensor:
        """libjpeg's h2v2 "fancy" upsampling (triangle filter, edge replication, libjpeg's rounding)."""
        p = F.pad(plane[:, None], (0, 0, 1, 1), mode="replicate")[:, 0]
        up = 3.0 * plane + p[:, :-2]  # output row 2i uses input row i-1
        down = 3.0 * plane + p[:, 2:]  # output row 2i+1 uses input row i+1
        rows = torch.stack([up, down], dim=2).reshape(plane.shape[0], -1, plane.shape[-1])
        q = F.pad(rows[:, None], (1, 1, 0, 0), mode="replicate")[:, 0]
        left = 3.0 * rows + q[:, :, :-2]
        right = 3.0 * rows + q[:, :, 2:]
        left = self._snap(left / 16.0, torch.floor((left + 8.0) / 16.0))
        right = self._snap(right / 16.0, torch.floor((right + 7.0) / 16.0))
        return torch.stack([left, right], dim=-1).reshape(rows.shape[0], rows.shape[1], -1)

    # -- the operator -------------------------------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        c, h, w = self.x_shape
        p = self._rnd(((x + 1.0) * 127.5).clamp(0.0, 255.0))
        mcu = 16 if c == 3 else 8
        ph, pw = -h % mcu, -w % mcu
        if c == 1:
            plane = F.pad(p, (0, pw, 0, ph), mode="replicate")[:, 0] if (ph or pw) else p[:, 0]
            out = self._block_code(plane, self.q_luma)[:, None, :h, :w]
            return out / 127.5 - 1.0
        m = self._cast(self.rgb_to_ycc, p)
        ycc = torch.einsum("oc,bchw->bohw", m, p)
        y_plane = self._rnd(ycc[:, 0])
        chroma = self._rnd(ycc[:, 1:] + 128.0, _round_half_down)
        if ph or pw:
            y_plane = F.pad(y_plane[:, None], (0, pw, 0, ph), mode="replicate")[:, 0]
            chroma = F.pad(chroma, (0, pw, 0, ph), mode="replicate")
        bsz = x.shape[0]
        y_dec = self._block_code(y_plane, self.q_luma)[:, :h, :w]
        ch, cw = (h + 1) // 2, (w + 1) // 2
        sub = self._downsample(chroma.reshape(bsz * 2, h + ph, w + pw))
        sub = self._block_code(sub, self.q_chroma)[:, :ch, :cw]
        up = self._upsample(sub)[:, :h, :w].reshape(bsz, 2, h, w) - 128.0
        ycc_dec = torch.cat([y_dec[:, None], up], dim=1)
        rgb = torch.einsum("oc,bchw->bohw", self._cast(self.ycc_to_rgb, ycc_dec), ycc_dec)
        rgb = self._rnd(rgb).clamp(0.0, 255.0)
        return rgb / 127.5 - 1.0

    def initial_estimate(self, y: Tensor) -> Tensor:
        """The decoded JPEG itself."""
        self._check_y(y)
        return y.clone()


def _build_jpeg(quality: int, c: BuildContext) -> JPEG:
    if c.shape[0] not in (1, 3):
        raise OperatorError(f"jpeg needs 1- or 3-channel images, got {c.shape[0]} channel(s)")
    return JPEG(c.shape, quality, c.task)


register_task(TaskSpec(
    name="jpeg", doc="JPEG encode-decode at quality Q (YCbCr 4:2:0, IJG tables, straight-through rounding)",
    param=int, symbol="Q", default=75, check=Range(low=1, high=100, integer=True), build=_build_jpeg,
))
