"""Write an ADM prior (the bundled one, a named one, any guided-diffusion checkpoint) as a diffusers pipeline folder.

guided-diffusion's UNet and diffusers' ``UNet2DModel`` are the same network when the ADM configuration is one that
``UNet2DModel`` can express: the same sinusoidal time embedding (``cat([cos, sin])``, ``flip_sin_to_cos=True``, no
frequency shift) and MLP, ResBlocks with scale-shift or additive time conditioning, resampling by stride-2 convs /
nearest upsampling + conv or by ResBlocks (``downsample_type``/``upsample_type`` "resnet"), self-attention after each
ResBlock at the attention resolutions and in the middle block, group norms of 32 groups. :func:`adm_to_unet2d` maps
the weights one to one (the packed qkv convolution is split into ``to_q``/``to_k``/``to_v``) and refuses what has no
counterpart (class labels, a first level wider than the base channels, head counts that give different head widths).
:func:`export_diffusers` writes ``DDPMPipeline.save_pretrained`` output with the prior's schedule as a
``DDPMScheduler`` config, so ``--prior diffusers:FOLDER`` and diffusers' own pipelines read it; the prior's presets
go with it (``reddiff.presets.json``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import ReddiffError
from .adm import ADMUNet, _AttentionBlock, _Downsample, _ResBlock, _Upsample

__all__ = ["adm_to_unet2d", "export_diffusers", "scheduler_config_of"]


def _head_dim(net: ADMUNet) -> int | None:
    """diffusers' single ``attention_head_dim`` for every attention block of ``net`` (None: one head each)."""
    widths = {m.qkv.out_channels // 3 // m.num_heads for m in net.modules() if isinstance(m, _AttentionBlock)}
    heads = {m.num_heads for m in net.modules() if isinstance(m, _AttentionBlock)}
    if heads == {1}:
        return None
    if len(widths) != 1:
        raise ReddiffError(f"this ADM has attention heads of different widths ({sorted(widths)} channels); a "
                           "diffusers UNet2DModel has one attention_head_dim for all blocks")
    return widths.pop()


def _unet_config(net: ADMUNet) -> dict[str, Any]:
    cfg = net.config
    if net.num_classes is not None:
        raise ReddiffError("class-conditional ADMs cannot be exported: diffusers' UNet2DModel takes no class labels "
                           "in this form")
    if net.channel_mult[0] != 1:
        raise ReddiffError(f"this ADM's first level has {net.channel_mult[0]}x the base channels; diffusers' "
                           "UNet2DModel embeds time at the first level's width, so only channel_mult starting at 1 "
                           "exports")
    attention_ds = {1 << level for level in range(len(net.channel_mult))
                    if any(isinstance(m, _AttentionBlock) for m in _level_modules(net, level))}
    updown = bool(cfg["resblock_updown"])
    down, up = [], []
    for level in range(len(net.channel_mult)):
        attn = (1 << level) in attention_ds
        down.append("AttnDownBlock2D" if attn else ("ResnetDownsampleBlock2D" if updown else "DownBlock2D"))
    for level in reversed(range(len(net.channel_mult))):
        attn = (1 << level) in attention_ds
        up.append("AttnUpBlock2D" if attn else ("ResnetUpsampleBlock2D" if updown else "UpBlock2D"))
    return {
        "sample_size": int(cfg["image_size"]),
        "in_channels": net.in_channels,
        "out_channels": net.out_channels,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": [int(m * net.model_channels) for m in net.channel_mult],
        "layers_per_block": int(cfg["num_res_blocks"]),
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv",
        "resnet_time_scale_shift": "scale_shift" if cfg["use_scale_shift_norm"] else "default",
        "attention_head_dim": _head_dim(net),
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "dropout": float(cfg["dropout"]),
        "add_attention": True,
    }


def _level_modules(net: ADMUNet, level: int) -> list[torch.nn.Module]:
    """The input blocks (ResBlocks and attention) of one level, without its downsampler."""
    n = int(net.config["num_res_blocks"])
    start = 1 + level * (n + 1)
    return [m for block in net.input_blocks[start:start + n] for m in block]


class _Mapper:
    """Builds the ``UNet2DModel`` state dict from an ADM state dict, one block at a time."""

    def __init__(self, net: ADMUNet) -> None:
        self.net = net
        self.src = {k: v.detach().float().cpu().clone() for k, v in net.state_dict().items()}
        self.out: dict[str, torch.Tensor] = {}

    def copy(self, src: str, dst: str) -> None:
        for p in ("weight", "bias"):
            self.out[f"{dst}.{p}"] = self.src[f"{src}.{p}"]

    def resblock(self, src: str, dst: str, block: _ResBlock) -> None:
        pairs = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2"}
        if not isinstance(block.skip_connection, torch.nn.Identity):
            pairs["skip_connection"] = "conv_shortcut"
        for a, b in pairs.items():
            self.copy(f"{src}.{a}", f"{dst}.{b}")

    def attention(self, src: str, dst: str, block: _AttentionBlock) -> None:
        channels = block.qkv.in_channels
        heads, width = block.num_heads, channels // block.num_heads
        w, b = self.src[f"{src}.qkv.weight"][..., 0], self.src[f"{src}.qkv.bias"]
        if block.attention.legacy:  # per head: q, k, v rows consecutive
            w = w.reshape(heads, 3, width, channels).transpose(0, 1).reshape(3, channels, channels)
            b = b.reshape(heads, 3, width).transpose(0, 1).reshape(3, channels)
        else:  # all q, all k, all v
            w, b = w.reshape(3, channels, channels), b.reshape(3, channels)
        for i, name in enumerate(("to_q", "to_k", "to_v")):
            self.out[f"{dst}.{name}.weight"], self.out[f"{dst}.{name}.bias"] = w[i], b[i]
        self.copy(f"{src}.norm", f"{dst}.group_norm")
        self.out[f"{dst}.to_out.0.weight"] = self.src[f"{src}.proj_out.weight"][..., 0]
        self.out[f"{dst}.to_out.0.bias"] = self.src[f"{src}.proj_out.bias"]

    def member(self, src: str, dst: str, index: int, module: torch.nn.Module, resample: str) -> None:
        """One module of an ADM block: its ResBlock (``index``-th resnet), attention or resampler."""
        if isinstance(module, _ResBlock) and not module.updown:
            self.resblock(src, f"{dst}.resnets.{index}", module)
        elif isinstance(module, _ResBlock):
            self.resblock(src, f"{dst}.{resample}.0", module)
        elif isinstance(module, _AttentionBlock):
            self.attention(src, f"{dst}.attentions.{index}", module)
        elif isinstance(module, (_Downsample, _Upsample)):
            self.copy(f"{src}.{'op' if resample == 'downsamplers' else 'conv'}", f"{dst}.{resample}.0.conv")
        else:  # pragma: no cover - ADMUNet builds no other block members
            raise ReddiffError(f"cannot export ADM module {type(module).__name__}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        net, n = self.net, int(self.net.config["num_res_blocks"])
        for a, b in (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
                     ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")):
            self.copy(a, b)
        k = 1
        for level in range(len(net.channel_mult)):
            for j in range(n):
                for pos, module in enumerate(net.input_blocks[k]):
                    self.member(f"input_blocks.{k}.{pos}", f"down_blocks.{level}", j, module, "downsamplers")
                k += 1
            if level != len(net.channel_mult) - 1:
                self.member(f"input_blocks.{k}.0", f"down_blocks.{level}", 0, net.input_blocks[k][0], "downsamplers")
                k += 1
        self.resblock("middle_block.0", "mid_block.resnets.0", net.middle_block[0])
        self.attention("middle_block.1", "mid_block.attentions.0", net.middle_block[1])
        self.resblock("middle_block.2", "mid_block.resnets.1", net.middle_block[2])
        k = 0
        for u in range(len(net.channel_mult)):
            for i in range(n + 1):
                for pos, module in enumerate(net.output_blocks[k]):
                    self.member(f"output_blocks.{k}.{pos}", f"up_blocks.{u}", i, module, "upsamplers")
                k += 1
        return self.out


def adm_to_unet2d(net: ADMUNet) -> Any:
    """The diffusers ``UNet2DModel`` that computes what ``net`` computes (float32 weights, eval mode).

    Raises:
        ReddiffError: ``net`` has no ``UNet2DModel`` counterpart (class-conditional, first level wider than the base
            channels, attention heads of different widths), or diffusers is missing.
    """
    from .diffusers_route import _diffusers

    diffusers = _diffusers()
    config = _unet_config(net)
    state = _Mapper(net).state_dict()
    unet = diffusers.UNet2DModel(**config)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:  # pragma: no cover - a mapping bug, not a user error
        raise ReddiffError(f"ADM to UNet2DModel mapping is incomplete: missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}")
    return unet.eval().requires_grad_(False)


def scheduler_config_of(prior: Any) -> dict[str, Any]:
    """The ``DDPMScheduler`` settings of an ADM prior's discrete VP ε schedule.

    Raises:
        ReddiffError: the prior is not a discrete VP ε-prediction prior.
    """
    from ..schedule import VPSchedule

    schedule = prior.schedule
    if not isinstance(schedule, VPSchedule) or prior.prediction != "epsilon":
        raise ReddiffError(f"only discrete VP ε priors export to a DDPMScheduler; this one is {schedule.family} "
                           f"with {prior.prediction} prediction")
    kinds = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
    betas = schedule.betas
    return {"num_train_timesteps": int(schedule.num_timesteps), "beta_schedule": kinds[schedule.kind],
            "beta_start": float(betas[0]), "beta_end": float(betas[-1]), "prediction_type": "epsilon",
            "variance_type": "learned_range" if prior.learned_sigma else "fixed_small",
            "clip_sample": bool(prior.clip_denoised)}


def export_diffusers(prior: Any, folder: str | Path, overwrite: bool = False) -> Path:
    """Write an ADM prior as a diffusers pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``, and the
    prior's presets as ``reddiff.presets.json`` when it has any).

    The folder is written beside its final place and moved there when complete, so a failure leaves nothing.

    Raises:
        ReddiffError: the prior has no ADM network or no DDPM schedule (see :func:`adm_to_unet2d`), or ``folder``
            exists and ``overwrite`` is false.
    """
    from .diffusers_route import _diffusers

    given, folder = folder, Path(folder).expanduser().resolve()
    network = getattr(prior, "network", None)
    if not isinstance(network, ADMUNet):
        raise ReddiffError(f"only ADM priors (bundled, named, guided-diffusion checkpoints) export to diffusers; this "
                           f"prior's network is {type(network).__name__}")
    if folder.exists() and not overwrite:
        raise ReddiffError(f"{given} exists; pass --overwrite to replace it")
    if folder.exists():
        source = prior.info.get("path")
        if not (folder / "model_index.json").is_file():
            raise ReddiffError(f"{given} exists and is not a diffusers pipeline folder; --overwrite replaces only "
                               "those, choose another --output")
        if Path.cwd().resolve().is_relative_to(folder) or (source and Path(source).resolve().is_relative_to(folder)):
            raise ReddiffError(f"{given} holds the current folder or the prior being exported; choose another --output")
    if folder.parent.exists() and not folder.parent.is_dir():
        raise ReddiffError(f"cannot write {given}: {folder.parent} is a file")
    diffusers = _diffusers()
    scheduler = diffusers.DDPMScheduler(**scheduler_config_of(prior))
    unet = adm_to_unet2d(network)
    tmp = folder.parent / f".{folder.name}.part"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        _write(diffusers, unet, scheduler, prior, folder, tmp)
    except OSError as exc:
        raise ReddiffError(f"cannot write {given}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write(diffusers: Any, unet: Any, scheduler: Any, prior: Any, folder: Path, tmp: Path) -> None:
    """Save the pipeline into ``tmp``, then put it in ``folder``'s place (a previous pipeline there goes)."""
    from ..io import write_json
    from ..tools.presets import load_presets, presets_path

    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
    presets = load_presets(prior.info.get("path"))
    if presets is not None:  # the same network and schedule: the same presets
        presets = {**presets, "provenance": {**presets.get("provenance", {}),
                                             "exported_from": prior.info.get("name") or prior.info.get("path")}}
        write_json(presets, presets_path(tmp))
    if folder.exists():  # a pipeline folder (checked above): set it aside, put the new one, then delete it
        old = folder.parent / f".{folder.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
