"""The ADM UNet ("Diffusion Models Beat GANs", Dhariwal & Nichol 2021), written from its published architecture.

The module tree, parameter names and shapes are those of openai's guided-diffusion checkpoints, so their
state dicts load with ``load_state_dict(strict=True)``; the forward pass reproduces the reference numerically
(float32 group norms, sinusoidal time embedding ``cat([cos, sin])``, scale-shift norm, legacy or new QKV head
order). Only 2-D images are supported.

Layout (module names in brackets are state-dict prefixes):

- ``time_embed.{0,2}``: Linear(C, 4C), SiLU, Linear(4C, 4C) on the sinusoidal embedding of ``t`` (C = num_channels);
  ``label_emb``: an embedding of the class label added to it (class-conditional models only).
- ``input_blocks.0.0``: 3x3 conv to ``channel_mult[0] * C`` channels; then per level ``num_res_blocks`` ResBlocks
  (each followed by an attention block at attention resolutions) and, except at the last level, a 2x downsampler
  (a ResBlock with ``down=True`` when ``resblock_updown``, else a stride-2 conv ``op``).
- ``middle_block.{0,1,2}``: ResBlock, attention, ResBlock.
- ``output_blocks``: per level (deepest first) ``num_res_blocks + 1`` ResBlocks on ``cat([h, skip])``, attention
  where the input path had it, and a 2x upsampler closing each level but the top (ResBlock ``up=True`` or nearest
  upsampling + conv ``conv``).
- ``out.{0,2}``: GroupNorm, SiLU, 3x3 conv to ``in_channels`` (x2 with learned sigma).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _grad_checkpoint

from ..errors import CheckpointError, ReddiffError

__all__ = [
    "ADMUNet",
    "DEFAULT_CHANNEL_MULT",
    "IGNORED_CONFIG_KEYS",
    "create_model",
    "infer_config",
    "timestep_embedding",
]

#: guided-diffusion's default ``channel_mult`` per image size (used when ``channel_mult=""``).
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}

#: Keys of guided-diffusion's combined model-and-diffusion argument dicts that say nothing about the network and are
#: accepted (and dropped) by :func:`create_model`, so such a dict can be passed as is. The diffusion schedule is the
#: prior's business, not the network's.
IGNORED_CONFIG_KEYS: frozenset[str] = frozenset(
    {
        "diffusion_steps",
        "noise_schedule",
        "timestep_respacing",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
        "model_path",
    }
)

_NUM_GROUPS = 32


# ----------------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, guided-diffusion order ``cat([cos, sin])``.

    Args:
        timesteps: ``[B]`` timesteps.
        dim: embedding width; an odd width gets a trailing zero column.
        max_period: the longest period of the sinusoids.

    Returns:
        A float32 ``[B, dim]`` tensor.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always computes in float32 and returns the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    if channels % _NUM_GROUPS:
        raise ReddiffError(f"{channels} channels cannot be group-normalised: widths must be multiples of {_NUM_GROUPS}")
    return GroupNorm32(_NUM_GROUPS, channels)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class _EmbBlock(nn.Module):
    """A block whose forward takes the time(-and-class) embedding as a second argument."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class _EmbSequential(nn.Sequential):
    """``nn.Sequential`` that hands the embedding to the blocks that take one."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _EmbBlock) else layer(x)
        return x


class _Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 conv (state-dict name ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class _Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 conv or 2x2 average pooling (state-dict name ``op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.op(x)


class _ResBlock(_EmbBlock):
    """Residual block conditioned on the embedding, optionally resampling (``up``/``down``) on the way."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = _Upsample(channels, False)
            self.x_upd: nn.Module = _Upsample(channels, False)
        elif down:
            self.h_upd = _Downsample(channels, False)
            self.x_upd = _Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # noqa: D102
        if self.updown:
            # Resample between the activation and the conv of the input layers, and on the skip path.
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class _QKVAttention(nn.Module):
    """Scaled dot-product attention on a packed ``[B, 3 * heads * ch, T]`` qkv tensor.

    ``legacy=True`` is guided-diffusion's original packing (per head: q, k, v consecutive); ``legacy=False`` is its
    "new order" (all q, then all k, then all v).
    """

    def __init__(self, num_heads: int, legacy: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.legacy = legacy

    def forward(self, qkv: Tensor) -> Tensor:  # noqa: D102
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        if self.legacy:
            q, k, v = qkv.reshape(bs * self.num_heads, 3 * ch, length).split(ch, dim=1)
        else:
            q, k, v = (z.reshape(bs * self.num_heads, ch, length) for z in qkv.chunk(3, dim=1))
        scale = 1.0 / math.sqrt(math.sqrt(ch))  # split between q and k for fp16 headroom
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = torch.einsum("bts,bcs->bct", weight, v)
        return out.reshape(bs, -1, length)


class _AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, new_order: bool = False) -> None:
        super().__init__()
        if num_head_channels == -1:
            heads = num_heads
        else:
            if channels % num_head_channels:
                raise ReddiffError(
                    f"attention channels {channels} are not a multiple of num_head_channels {num_head_channels}"
                )
            heads = channels // num_head_channels
        if heads < 1 or channels % heads:
            raise ReddiffError(f"attention channels {channels} cannot be split into {heads} heads")
        self.num_heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.attention = _QKVAttention(heads, legacy=not new_order)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration helpers
# ----------------------------------------------------------------------------------------------------------------------


def _format_number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _parse_channel_mult(channel_mult: str | Sequence[float], image_size: int) -> tuple[float, ...]:
    if isinstance(channel_mult, str):
        if channel_mult.strip() == "":
            if image_size not in DEFAULT_CHANNEL_MULT:
                raise ReddiffError(
                    f"no default channel_mult for image_size {image_size} (defaults exist for "
                    f"{sorted(DEFAULT_CHANNEL_MULT)}); pass channel_mult explicitly, e.g. '1,2,2'"
                )
            return DEFAULT_CHANNEL_MULT[image_size]
        try:
            mult = tuple(float(s) for s in channel_mult.split(","))
        except ValueError:
            raise ReddiffError(
                f"bad channel_mult {channel_mult!r}: expected comma-separated numbers like '1,2,2'"
            ) from None
    else:
        mult = tuple(float(m) for m in channel_mult)
    if not mult or any(m <= 0 for m in mult):
        raise ReddiffError(f"bad channel_mult {channel_mult!r}: expected one or more positive numbers")
    return tuple(int(m) if m.is_integer() else m for m in mult)


def _parse_resolutions(attention_resolutions: str | Iterable[int]) -> tuple[int, ...]:
    if isinstance(attention_resolutions, str):
        parts = [s for s in attention_resolutions.split(",") if s.strip()]
        try:
            return tuple(int(s) for s in parts)
        except ValueError:
            raise ReddiffError(
                f"bad attention_resolutions {attention_resolutions!r}: expected comma-separated integers like '32,16,8'"
            ) from None
    return tuple(int(r) for r in attention_resolutions)


# ----------------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------------


class ADMUNet(nn.Module):
    """guided-diffusion's UNet, constructed from guided-diffusion ``create_model`` arguments.

    The constructor takes the same arguments as :func:`create_model` (which validates unknown keys and calls it).

    Args:
        image_size: nominal training resolution; it only fixes the default ``channel_mult`` and the meaning of
            ``attention_resolutions``. Any input whose sides are multiples of :attr:`size_multiple` is accepted.
        num_channels: base channel count ``C``.
        num_res_blocks: ResBlocks per level.
        channel_mult: per-level channel multipliers: ``""`` (the default for ``image_size``), ``"1,2,2"`` or a tuple.
        learn_sigma: the network also outputs the variance interpolation (output channels doubled).
        class_cond: class-conditional (``label_emb``, ``forward(..., y=labels)``).
        use_checkpoint: recompute activations in the backward pass (gradient checkpointing) to save memory.
        attention_resolutions: resolutions (``image_size // downsample factor``) with self-attention, e.g. "32,16,8".
        num_heads: attention heads (used when ``num_head_channels == -1``).
        num_head_channels: channels per head (overrides ``num_heads`` when not -1).
        num_heads_upsample: heads in the decoder attention (-1: same as ``num_heads``).
        use_scale_shift_norm: FiLM-like conditioning ``norm(h) * (1 + scale) + shift``.
        dropout: dropout probability inside ResBlocks (inactive in eval mode).
        resblock_updown: resample with ResBlocks instead of conv down/upsamplers.
        use_fp16: keep the convolution weights of the input/middle/output blocks in float16 and run them in half
            precision (time embedding, norms and the output head stay float32), as the reference does.
        use_new_attention_order: qkv packed as all-q, all-k, all-v instead of the legacy per-head order.
        in_channels: image channels (guided-diffusion always uses 3).
        num_classes: number of classes of a class-conditional model (default 1000, ImageNet).

    Attributes:
        in_channels: image channels.
        out_channels: ``in_channels`` or twice that with learned sigma (first half is ε).
        learn_sigma: whether the output carries the variance channels.
        num_classes: class count, or ``None`` for an unconditional model.
        size_multiple: input height and width must be multiples of this (``2 ** (levels - 1)``).
        config: the full, JSON-serialisable :func:`create_model` arguments of this network.
    """

    def __init__(
        self,
        image_size: int,
        num_channels: int,
        num_res_blocks: int,
        channel_mult: str | Sequence[float] = "",
        learn_sigma: bool = False,
        class_cond: bool = False,
        use_checkpoint: bool = False,
        attention_resolutions: str | Iterable[int] = "16",
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        dropout: float = 0.0,
        resblock_updown: bool = False,
        use_fp16: bool = False,
        use_new_attention_order: bool = False,
        in_channels: int = 3,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        image_size, num_channels, num_res_blocks = int(image_size), int(num_channels), int(num_res_blocks)
        if image_size < 1 or num_channels < 1 or num_res_blocks < 1 or in_channels < 1:
            raise ReddiffError(
                "image_size, num_channels, num_res_blocks and in_channels must be positive integers, got "
                f"{image_size}, {num_channels}, {num_res_blocks}, {in_channels}"
            )
        mult = _parse_channel_mult(channel_mult, image_size)
        resolutions = _parse_resolutions(attention_resolutions)
        if any(r < 1 for r in resolutions):
            raise ReddiffError(f"bad attention_resolutions {attention_resolutions!r}: resolutions must be positive")
        attention_ds = {image_size // r for r in resolutions}
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        if class_cond and num_classes is None:
            num_classes = 1000
        if not class_cond:
            num_classes = None

        self.config: dict[str, Any] = {
            "image_size": image_size,
            "num_channels": num_channels,
            "num_res_blocks": num_res_blocks,
            "channel_mult": ",".join(_format_number(m) for m in mult),
            "learn_sigma": bool(learn_sigma),
            "class_cond": bool(class_cond),
            "use_checkpoint": bool(use_checkpoint),
            "attention_resolutions": ",".join(str(r) for r in resolutions),
            "num_heads": int(num_heads),
            "num_head_channels": int(num_head_channels),
            "num_heads_upsample": int(num_heads_upsample),
            "use_scale_shift_norm": bool(use_scale_shift_norm),
            "dropout": float(dropout),
            "resblock_updown": bool(resblock_updown),
            "use_fp16": bool(use_fp16),
            "use_new_attention_order": bool(use_new_attention_order),
            "in_channels": int(in_channels),
            "num_classes": None if num_classes is None else int(num_classes),
        }
        self.image_size = image_size
        self.in_channels = int(in_channels)
        self.learn_sigma = bool(learn_sigma)
        self.out_channels = self.in_channels * (2 if learn_sigma else 1)
        self.num_classes = num_classes
        self.model_channels = num_channels
        self.channel_mult = mult
        self.size_multiple = 2 ** (len(mult) - 1)
        self.use_checkpoint = bool(use_checkpoint)
        self.use_fp16 = bool(use_fp16)

        emb_ch = 4 * num_channels
        self.time_embed = nn.Sequential(nn.Linear(num_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_ch)

        def res(ch_in: int, ch_out: int, **kw: bool) -> _ResBlock:
            return _ResBlock(ch_in, emb_ch, dropout, ch_out, use_scale_shift_norm, **kw)

        def attn(ch: int, heads: int) -> _AttentionBlock:
            return _AttentionBlock(ch, heads, num_head_channels, use_new_attention_order)

        # Encoder.
        ch = int(mult[0] * num_channels)
        input_ch = ch
        self.input_blocks = nn.ModuleList([_EmbSequential(nn.Conv2d(self.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(m * num_channels))]
                ch = int(m * num_channels)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(_EmbSequential(*layers))
                skip_chans.append(ch)
            if level != len(mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else _Downsample(ch, True, ch)
                self.input_blocks.append(_EmbSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = _EmbSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        # Decoder.
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(m * num_channels))]
                ch = int(m * num_channels)
                if ds in attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else _Upsample(ch, True, ch))
                    ds //= 2
                self.output_blocks.append(_EmbSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zeroed(nn.Conv2d(input_ch, self.out_channels, 3, padding=1)))
        if self.use_fp16:
            self.convert_to_fp16()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the UNet body runs in: its convolutions' (float16 with ``use_fp16``, float32, or float64 after
        ``.double()``)."""
        return self.input_blocks[0][0].weight.dtype

    def _body_convs(self) -> Iterable[nn.Module]:
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in part.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    yield module

    def convert_to_fp16(self) -> None:
        """Cast the conv weights of the input, middle and output blocks to float16 (sets ``use_fp16``)."""
        for conv in self._body_convs():
            conv.half()
        self.use_fp16 = True
        self.config["use_fp16"] = True

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16` (clears ``use_fp16``)."""
        for conv in self._body_convs():
            conv.float()
        self.use_fp16 = False
        self.config["use_fp16"] = False

    def _run(self, block: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled() and (h.requires_grad or emb.requires_grad):
            return _grad_checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, x: Tensor, timesteps: Tensor | float, y: Tensor | None = None) -> Tensor:
        """Predict the network output (ε, and the variance channels with learned sigma) for a noisy batch.

        Args:
            x: ``[B, in_channels, H, W]`` noisy images, ``H`` and ``W`` multiples of :attr:`size_multiple`.
            timesteps: ``[B]`` (or scalar / ``[1]``, broadcast) timesteps in the training range, e.g. 0..999.
            y: ``[B]`` integer class labels; required for and only accepted by class-conditional models.

        Returns:
            ``[B, out_channels, H, W]`` in ``x``'s dtype.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ReddiffError(f"expected input of shape [B, {self.in_channels}, H, W], got {list(x.shape)}")
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ReddiffError(
                f"input size {x.shape[-2]}x{x.shape[-1]} is not a multiple of {self.size_multiple} in both sides; "
                "pad or crop the image"
            )
        if (y is None) != (self.num_classes is None):
            raise ReddiffError(
                "class labels y are required for a class-conditional model"
                if y is None
                else "class labels y were given to an unconditional model"
            )
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ReddiffError(f"timesteps must be a scalar or have shape [{x.shape[0]}], got {list(t.shape)}")

        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(x.device).long())

        h = x.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        h = self.out(h.to(self.out[2].weight.dtype))
        return h.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Factory and config inference
# ----------------------------------------------------------------------------------------------------------------------

_CREATE_MODEL_KEYS = (
    "image_size",
    "num_channels",
    "num_res_blocks",
    "channel_mult",
    "learn_sigma",
    "class_cond",
    "use_checkpoint",
    "attention_resolutions",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_scale_shift_norm",
    "dropout",
    "resblock_updown",
    "use_fp16",
    "use_new_attention_order",
    "in_channels",
    "num_classes",
)


def create_model(
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    channel_mult: str | Sequence[float] = "",
    learn_sigma: bool = False,
    class_cond: bool = False,
    use_checkpoint: bool = False,
    attention_resolutions: str | Iterable[int] = "16",
    num_heads: int = 1,
    num_head_channels: int = -1,
    num_heads_upsample: int = -1,
    use_scale_shift_norm: bool = False,
    dropout: float = 0.0,
    resblock_updown: bool = False,
    use_fp16: bool = False,
    use_new_attention_order: bool = False,
    **extra: Any,
) -> ADMUNet:
    """Build an :class:`ADMUNet` from guided-diffusion ``create_model`` arguments.

    Argument meanings are those of guided-diffusion's ``script_util.create_model`` (see :class:`ADMUNet`);
    ``in_channels`` (default 3) and ``num_classes`` (default 1000 when ``class_cond``) are accepted as extra keys.
    Keys in :data:`IGNORED_CONFIG_KEYS` (diffusion settings of a combined argument dict) are dropped.

    Args:
        image_size: nominal resolution (fixes the default ``channel_mult`` and the attention resolutions).
        num_channels: base channel count.
        num_res_blocks: ResBlocks per level.
        channel_mult: ``""`` for the image size's default, ``"1,2,2"`` or a tuple.
        learn_sigma: six output channels (ε and the variance interpolation) instead of three.
        class_cond: class-conditional model.
        use_checkpoint: gradient checkpointing (memory saving when backpropagating through the network).
        attention_resolutions: comma string of resolutions with attention, e.g. ``"32,16,8"``.
        num_heads: attention heads when ``num_head_channels == -1``.
        num_head_channels: channels per attention head, or -1.
        num_heads_upsample: decoder attention heads, -1 for ``num_heads``.
        use_scale_shift_norm: scale-shift conditioning in ResBlocks.
        dropout: ResBlock dropout.
        resblock_updown: ResBlock resamplers.
        use_fp16: half-precision UNet body.
        use_new_attention_order: new qkv packing order.
        **extra: ``in_channels``, ``num_classes`` or keys of :data:`IGNORED_CONFIG_KEYS`.

    Returns:
        The network (random weights; output convs zero-initialised as in the reference).

    Raises:
        ReddiffError: an unknown argument or an inconsistent architecture.
    """
    unknown = sorted(k for k in extra if k not in ("in_channels", "num_classes") and k not in IGNORED_CONFIG_KEYS)
    if unknown:
        raise ReddiffError(
            f"unknown network config key(s) {', '.join(unknown)}; accepted: {', '.join(_CREATE_MODEL_KEYS)}"
        )
    return ADMUNet(
        image_size=image_size,
        num_channels=num_channels,
        num_res_blocks=num_res_blocks,
        channel_mult=channel_mult,
        learn_sigma=learn_sigma,
        class_cond=class_cond,
        use_checkpoint=use_checkpoint,
        attention_resolutions=attention_resolutions,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        dropout=dropout,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
        use_new_attention_order=use_new_attention_order,
        in_channels=extra.get("in_channels", 3),
        num_classes=extra.get("num_classes"),
    )


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise CheckpointError(
            f"not a guided-diffusion ADM state dict: key {key} is missing; pass the network config explicitly"
        ) from None


def infer_config(
    state_dict: Mapping[str, Any],
    *,
    image_size: int | None = None,
    num_heads: int | None = None,
    num_head_channels: int | None = None,
    use_new_attention_order: bool = False,
) -> dict[str, Any]:
    """Infer :func:`create_model` arguments from a guided-diffusion state dict.

    Read from the tensors: ``in_channels``, ``num_channels`` (time-embedding input width), ``learn_sigma`` (output
    channels), ``num_res_blocks`` and the number of levels (where the first upsampler sits), ``channel_mult``
    (first ResBlock width of each level), the attention levels, ``use_scale_shift_norm`` (ResBlock embedding
    projection twice the block width), ``resblock_updown`` (ResBlock vs conv resamplers), ``class_cond`` and
    ``num_classes`` (``label_emb``).

    Not recoverable from a state dict, so chosen by convention unless given:

    - ``image_size``: nominal only (the network is convolutional); taken as ``8 * 2 ** (levels - 1)``, which is the
      guided-diffusion value for all its default ``channel_mult`` (64, 128, 256, 512). It only sets how
      ``attention_resolutions`` is written; the architecture is the same for any choice.
    - The attention head split (the qkv weights have the same shape for any head count, but the output does not):
      ``num_head_channels=64`` when every attention width is a multiple of 64 (the public ImageNet/FFHQ models),
      else ``num_head_channels=-1`` with ``num_heads=4`` (guided-diffusion's default) when the widths allow it, else
      1. Pass ``num_heads``/``num_head_channels`` when you know them; a wrong guess still loads strictly but
      computes a different function.
    - ``use_new_attention_order`` (False), ``num_heads_upsample`` (-1), ``dropout`` (0), ``use_fp16`` (False).

    Args:
        state_dict: parameter name -> tensor (anything with a ``shape``).
        image_size: nominal image size, if known.
        num_heads: attention heads, if known.
        num_head_channels: channels per attention head, if known.
        use_new_attention_order: the qkv packing order, if known.

    Returns:
        A full :func:`create_model` argument dict.

    Raises:
        CheckpointError: the state dict is not laid out like a guided-diffusion UNet.
    """
    num_channels = _shape(state_dict, "time_embed.0.weight")[1]
    in_channels = _shape(state_dict, "input_blocks.0.0.weight")[1]
    out_channels = _shape(state_dict, "out.2.weight")[0]
    if out_channels not in (in_channels, 2 * in_channels):
        raise CheckpointError(
            f"not a guided-diffusion ADM state dict: {out_channels} output channels for {in_channels} input channels"
        )
    learn_sigma = out_channels == 2 * in_channels

    def block_indices(prefix: str) -> list[int]:
        pat = re.compile(rf"^{prefix}\.(\d+)\.")
        return sorted({int(m.group(1)) for k in state_dict if (m := pat.match(k))})

    def sub_indices(prefix: str) -> list[int]:
        pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
        return sorted({int(m.group(1)) for k in state_dict if (m := pat.match(k))})

    out_blocks = block_indices("output_blocks")
    if not out_blocks or out_blocks != list(range(len(out_blocks))):
        raise CheckpointError("not a guided-diffusion ADM state dict: no consecutive output_blocks.N keys")

    def has_upsampler(i: int) -> bool:
        subs = sub_indices(f"output_blocks.{i}")
        return any(
            f"output_blocks.{i}.{j}.conv.weight" in state_dict
            or (j > 0 and f"output_blocks.{i}.{j}.in_layers.0.weight" in state_dict)
            for j in subs
        )

    first_up = next((i for i in out_blocks if has_upsampler(i)), None)
    num_res_blocks = first_up if first_up is not None else len(out_blocks) - 1
    if num_res_blocks < 1 or len(out_blocks) % (num_res_blocks + 1):
        raise CheckpointError("not a guided-diffusion ADM state dict: cannot make out the level structure")
    levels = len(out_blocks) // (num_res_blocks + 1)

    mult: list[float] = []
    attention_ds: list[int] = []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)
        width = _shape(state_dict, f"input_blocks.{first}.0.in_layers.2.weight")[0]
        m = width / num_channels
        mult.append(int(m) if float(m).is_integer() else m)
        if any(f"input_blocks.{first + r}.1.qkv.weight" in state_dict for r in range(num_res_blocks)):
            attention_ds.append(2**level)

    emb_width = _shape(state_dict, "input_blocks.1.0.emb_layers.1.weight")[0]
    block_width = _shape(state_dict, "input_blocks.1.0.in_layers.2.weight")[0]
    use_scale_shift_norm = emb_width == 2 * block_width
    resblock_updown = levels > 1 and f"input_blocks.{1 + num_res_blocks}.0.op.weight" not in state_dict

    if image_size is None:
        image_size = 8 * 2 ** (levels - 1)
    attn_widths = {tuple(v.shape)[1] for k, v in state_dict.items() if k.endswith(".qkv.weight")}
    if num_head_channels is None:
        if num_heads is not None:
            num_head_channels = -1
        elif attn_widths and all(w % 64 == 0 for w in attn_widths):
            num_head_channels = 64
        else:
            num_head_channels = -1
    if num_heads is None:
        num_heads = 4 if num_head_channels != -1 or all(w % 4 == 0 for w in attn_widths) else 1

    class_cond = "label_emb.weight" in state_dict
    return {
        "image_size": int(image_size),
        "num_channels": int(num_channels),
        "num_res_blocks": int(num_res_blocks),
        "channel_mult": ",".join(_format_number(m) for m in mult),
        "learn_sigma": learn_sigma,
        "class_cond": class_cond,
        "use_checkpoint": False,
        "attention_resolutions": ",".join(str(image_size // ds) for ds in sorted(attention_ds)),
        "num_heads": int(num_heads),
        "num_head_channels": int(num_head_channels),
        "num_heads_upsample": -1,
        "use_scale_shift_norm": use_scale_shift_norm,
        "dropout": 0.0,
        "resblock_updown": resblock_updown,
        "use_fp16": False,
        "use_new_attention_order": bool(use_new_attention_order),
        "in_channels": int(in_channels),
        "num_classes": int(_shape(state_dict, "label_emb.weight")[0]) if class_cond else None,
    }
