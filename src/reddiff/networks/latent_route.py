"""Latent priors from diffusers pipelines: ``reddiff.load_prior("sd:FOLDER_OR_HUB_ID")``.

A Stable-Diffusion-style pipeline folder (what ``save_pretrained`` writes; ``model_index.json`` beside the
components) is read component by component:

* ``vae/``: an ``AutoencoderKL`` (its ``scaling_factor``, and ``shift_factor`` where it has one);
* ``unet/``: a ``UNet2DConditionModel`` (Stable Diffusion 1.x / 2.x) or a ``UNet2DModel`` (an unconditional latent
  model), ε-, x0- or v-prediction, as its ``scheduler/`` config says (the same reading as the pixel route's,
  :func:`reddiff.networks.diffusers_route.scheduler_settings`);
* ``text_encoder/`` + ``tokenizer/`` (transformers' ``CLIPTextModel`` and its tokenizer): only to embed the prompt
  once, at load time (empty by default, as unconditional use wants); the encoder is not kept. Embedding follows
  diffusers' pipeline: the prompt padded to the tokenizer's ``model_max_length``, the encoder's last hidden state.

Classifier-free guidance (``guidance`` g, off at 1) makes the network ``u + g (c - u)`` of the unconditional and the
prompt's predictions (two evaluations per step). Weights are read from safetensors only. ``diffusers`` and
``transformers`` are optional extras (``pip install "reddiff[latent]"``); neither pulls another torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .diffusers_route import _diffusers, _read_json, read_scheduler, resolve_diffusers_folder, safetensors_weights
from .hub import one_line

__all__ = ["PREFIX", "SD_ARCHITECTURES", "is_latent_pipeline", "load_latent_prior", "embed_prompt",
           "random_latent_prior"]

PREFIX = "sd:"
_UNETS = ("UNet2DConditionModel", "UNet2DModel")
#: what a latent pipeline's snapshot needs: its index and the five components (not the single-file checkpoints,
#: fp16 or non-EMA copies, safety checker or feature extractor a hub repository may also hold).
LATENT_FILES = ["model_index.json"] + [f"{c}/*" for c in ("vae", "unet", "scheduler", "text_encoder", "tokenizer")]
LATENT_SKIP = ["*.fp16.*", "*non_ema*", "*.bin", "*.ckpt", "*.onnx", "*.msgpack", "*.h5"]
_SD_VAE = {"in_channels": 3, "out_channels": 3, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
           "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
           "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215}
#: the public Stable Diffusion architectures (their ``unet/config.json`` and ``vae/config.json``, with diffusers'
#: defaults for what those files leave out), for benchmarks with random weights; the text encoder's output is
#: stood in for by a random ``[1, 77, cross_attention_dim]`` embedding.
SD_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "sd-1.5": {"unet": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "cross_attention_dim": 768,
                        "attention_head_dim": 8}, "vae": _SD_VAE, "prediction": "epsilon"},
    "sd-2.1": {"unet": {"sample_size": 96, "in_channels": 4, "out_channels": 4, "cross_attention_dim": 1024,
                        "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True,
                        "upcast_attention": True}, "vae": {**_SD_VAE, "sample_size": 768},
               "prediction": "v_prediction"},
}


def is_latent_pipeline(folder: Path) -> bool:
    """Whether ``folder`` is a diffusers pipeline with an autoencoder (a latent pipeline)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return False
    return any(k in _read_json(index) for k in ("vae", "vqvae"))


def _component(folder: Path, index: dict[str, Any], name: str, why: str) -> Path:
    entry = index.get(name)
    path = folder / name
    if not entry or not isinstance(entry, list) or entry[-1] is None or not path.is_dir():
        have = ", ".join(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[-1])
        raise CheckpointError(f"the pipeline in {folder} has no {name}/ component ({why}); it has: {have or 'none'}")
    return path


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise CheckpointError('text-conditioned latent priors need transformers to embed the prompt: pip install '
                              '"reddiff[latent]"') from None
    return transformers


def embed_prompt(text_dir: Path, tokenizer_dir: Path, prompts: list[str],
                 tokenizer_class: str | None = None) -> list[torch.Tensor]:
    """The text encoder's last hidden state ``[1, L, D]`` for each prompt, as diffusers' Stable Diffusion pipeline
    computes it (padded to the tokenizer's ``model_max_length``, truncated beyond it), with the tokenizer class the
    pipeline names (``tokenizer_class``; default: transformers' automatic choice)."""
    transformers = _transformers()
    config = _read_json(text_dir / "config.json")
    arch = (config.get("architectures") or ["CLIPTextModel"])[0]
    cls = getattr(transformers, arch, None)
    if cls is None or arch not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise CheckpointError(f"text encoder {arch!r} in {text_dir} is not supported; accepted: CLIPTextModel")
    safetensors_weights(text_dir)
    try:
        tok_cls = getattr(transformers, tokenizer_class or "", None) or transformers.AutoTokenizer
        tokenizer = tok_cls.from_pretrained(str(tokenizer_dir))
        encoder = cls.from_pretrained(str(text_dir), use_safetensors=True).eval()
    except Exception as exc:  # noqa: BLE001 - a damaged folder raises many types
        raise CheckpointError(f"cannot load the text encoder or tokenizer of {text_dir.parent}: "
                              f"{one_line(exc)}") from None
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt")
            mask = ids.attention_mask if getattr(encoder.config, "use_attention_mask", False) else None
            out.append(encoder(ids.input_ids, attention_mask=mask).last_hidden_state.detach())
    return out


def load_latent_prior(spec: str, *, prompt: str | None = None, guidance: float | None = None,
                      device: torch.device | str | None = None, progress: bool = True,
                      checkpointing: bool = True) -> Any:
    """A :class:`reddiff.LatentPrior` from a diffusers latent pipeline folder or hub id (see the module docstring).

    Args:
        spec: the folder or hub id (without the ``sd:`` prefix).
        prompt: the text the denoiser is conditioned on (default: empty); needs a text encoder.
        guidance: classifier-free guidance scale (default 1: off).
        device: where to put the networks.
        progress: show download progress.
        checkpointing: decoder gradient checkpointing (memory for time).

    Raises:
        CheckpointError: one line for a missing folder or component, an unsupported model, pickled weights only, a
            prompt without a text encoder, or a missing package.
    """
    from ..latent import ConditionedUNet, DiffusersAutoencoder, LatentPrior
    from ..prior import DiffusionPrior
    from .loading import file_sha256

    diffusers = _diffusers()
    guidance = 1.0 if guidance is None else float(guidance)
    if not (math.isfinite(guidance) and guidance >= 1.0):
        raise CheckpointError(f"the guidance scale must be a number >= 1 (1: off), got {guidance}")
    folder = resolve_diffusers_folder(spec, progress, allow=LATENT_FILES, ignore=LATENT_SKIP)
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"{folder} is not a diffusers pipeline folder (no model_index.json); a latent prior "
                              "needs vae/, unet/ and scheduler/ beside it")
    index = _read_json(folder / "model_index.json")
    if "vqvae" in index and "vae" not in index:
        raise CheckpointError(f"the pipeline in {folder} has a VQ autoencoder (vqvae/), which is not supported; "
                              "accepted: AutoencoderKL in vae/")
    vae_dir = _component(folder, index, "vae", "the autoencoder")
    unet_dir = _component(folder, index, "unet", "the latent denoiser")
    sched_dir = _component(folder, index, "scheduler", "how the denoiser was trained")
    vae_config = _read_json(vae_dir / "config.json") if (vae_dir / "config.json").is_file() else {}
    if vae_config.get("_class_name") != "AutoencoderKL":
        raise CheckpointError(f"{vae_dir} holds a {vae_config.get('_class_name')!r}; accepted: AutoencoderKL")
    unet_config = _read_json(unet_dir / "config.json") if (unet_dir / "config.json").is_file() else {}
    kind = unet_config.get("_class_name")
    if kind not in _UNETS:
        raise CheckpointError(f"{unet_dir} holds a {kind!r}; accepted: {', '.join(_UNETS)}")
    if kind == "UNet2DConditionModel" and (unet_config.get("addition_embed_type") or
                                           unet_config.get("class_embed_type")):
        raise CheckpointError(f"{unet_dir} needs extra conditioning (addition_embed_type/class_embed_type, as "
                              "SDXL's does), which is not supported; accepted: Stable Diffusion 1.x/2.x UNets")
    vae_file, unet_file = safetensors_weights(vae_dir), safetensors_weights(unet_dir)
    settings, sched_config = read_scheduler(sched_dir)
    if settings["learned_sigma"]:
        raise CheckpointError("latent priors with learned variances are not supported")

    conditioned = kind == "UNet2DConditionModel"
    has_text = "text_encoder" in index and (folder / "text_encoder").is_dir()
    if prompt and not conditioned:
        raise CheckpointError(f"--prompt needs a text-conditioned pipeline; the UNet in {unet_dir} is a UNet2DModel, "
                              "which takes no text")
    if guidance != 1.0 and not conditioned:
        raise CheckpointError("classifier-free guidance needs a text-conditioned pipeline (UNet2DConditionModel)")
    cond = uncond = None
    if conditioned:
        if not has_text:
            what = f"the prompt {prompt!r}" if prompt else "the prompt (empty by default)"
            raise CheckpointError(f"the UNet in {unet_dir} is text-conditioned but the pipeline has no text_encoder/ "
                                  f"to embed {what}")
        text_dir = _component(folder, index, "text_encoder", "to embed the prompt")
        tok_dir = _component(folder, index, "tokenizer", "to embed the prompt")
        prompts = [prompt or ""] + ([""] if guidance != 1.0 else [])
        tok_entry = index.get("tokenizer")
        embeddings = embed_prompt(text_dir, tok_dir, prompts,
                                  tok_entry[-1] if isinstance(tok_entry, list) and tok_entry else None)
        cond, uncond = embeddings[0], (embeddings[1] if guidance != 1.0 else None)
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(str(vae_dir), use_safetensors=True, low_cpu_mem_usage=False)
        unet = getattr(diffusers, kind).from_pretrained(str(unet_dir), use_safetensors=True,
                                                         low_cpu_mem_usage=False)
    except Exception as exc:  # noqa: BLE001 - a damaged model folder raises many types
        raise CheckpointError(f"cannot load the autoencoder or UNet in {folder}: {one_line(exc)}") from None
    unet.eval().requires_grad_(False)
    if int(unet.config.in_channels) != int(vae.config.latent_channels):
        raise CheckpointError(f"the UNet takes {unet.config.in_channels} channels but the autoencoder's latents have "
                              f"{vae.config.latent_channels}")
    if conditioned:
        if int(cond.shape[-1]) != int(unet.config.cross_attention_dim):
            raise CheckpointError(f"the text encoder gives {cond.shape[-1]}-d embeddings but the UNet attends to "
                                  f"{unet.config.cross_attention_dim}-d ones")
        network: Any = ConditionedUNet(unet, cond, uncond, guidance)
    else:
        from .diffusers_route import DiffusersUNet

        network = DiffusersUNet(unet)
    info = {"name": f"{PREFIX}{spec}", "path": str(folder), "route": "latent", "sha256": file_sha256(unet_file),
            "vae_sha256": file_sha256(vae_file), "prompt": prompt or "", "guidance": guidance,
            "config": dict(unet.config), "vae_config": dict(vae.config),
            "scheduler": {k: v for k, v in sched_config.items() if not k.startswith("_") or k == "_class_name"}}
    latent = DiffusionPrior(network, settings["schedule"], info=info, data_range=None,
                            prediction=settings["prediction"], network_time=settings["network_time"])
    latent.steps_offset, latent.final_abar = settings["steps_offset"], settings["final_abar"]
    prior = LatentPrior(DiffusersAutoencoder(vae, checkpointing=checkpointing), latent)
    return prior.to(device) if device is not None else prior


def random_latent_prior(name: str, device: torch.device | str | None = None, checkpointing: bool = True) -> Any:
    """A :class:`reddiff.LatentPrior` of a :data:`SD_ARCHITECTURES` architecture with random weights (Stable
    Diffusion's scaled-linear betas), for measuring cost without the weights."""
    from ..latent import ConditionedUNet, DiffusersAutoencoder, LatentPrior
    from ..prior import DiffusionPrior
    from ..schedule import VPSchedule

    if name not in SD_ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {name!r}; accepted: {', '.join(SD_ARCHITECTURES)}")
    diffusers = _diffusers()
    arch = SD_ARCHITECTURES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(**arch["unet"]).eval().requires_grad_(False)
        vae = diffusers.AutoencoderKL(**arch["vae"])
        cond = torch.randn(1, 77, arch["unet"]["cross_attention_dim"])
    latent = DiffusionPrior(ConditionedUNet(unet, cond), VPSchedule("scaled_linear", 1000, 0.00085, 0.012,
                                                                     float32=True),
                            info={"name": f"{name} (random weights)", "route": "latent"}, data_range=None,
                            prediction=arch["prediction"])
    prior = LatentPrior(DiffusersAutoencoder(vae, checkpointing=checkpointing), latent)
    return prior.to(device) if device is not None else prior
