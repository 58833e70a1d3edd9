"""Priors from diffusers: a ``UNet2DModel`` and its scheduler config, from a local folder or the Hugging Face hub.

``reddiff.load_prior("diffusers:PATH_OR_ID")`` reads

* a pipeline folder as ``DDPMPipeline.save_pretrained`` writes it (``model_index.json``, ``unet/``, ``scheduler/``),
  or a model folder (``config.json`` of a ``UNet2DModel`` and its weights) with ``scheduler_config.json`` beside it or
  in ``scheduler/``;
* or a hub model id (``google/ddpm-cat-256``), through ``huggingface_hub``'s cache: with ``HF_HUB_OFFLINE=1`` (or
  ``REDDIFF_OFFLINE=1``) only what is cached is used, and a missing model is one error naming the cache folder.

The scheduler config decides the schedule and what the network predicts: DDPM/DDIM-style schedulers give a discrete
VP schedule (``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule`` linear / scaled_linear /
squaredcos_cap_v2, or ``trained_betas``) with ``prediction_type`` epsilon, sample or v_prediction; ``clip_sample``
clamps the Tweedie estimate; learned variances (``variance_type`` learned / learned_range) drop the variance channels;
``FlowMatchEulerDiscreteScheduler`` gives rectified flow with velocity prediction (the network sees ``t *
num_train_timesteps``). Weights are read from safetensors only: a folder with pickled ``.bin`` weights alone is
refused. ``diffusers`` is an optional extra (``pip install "reddiff[diffusers]"``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .hub import one_line

__all__ = ["PREFIX", "DiffusersUNet", "load_diffusers_prior", "resolve_diffusers_folder", "scheduler_settings"]

PREFIX = "diffusers:"

#: diffusers schedulers that define a discrete VP (DDPM) forward process by their betas.
_VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDIMInverseScheduler",
                  "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler",
                  "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
                  "UniPCMultistepScheduler", "DEISMultistepScheduler", "KDPM2DiscreteScheduler")
_FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise CheckpointError('diffusers priors need the diffusers package: pip install "reddiff[diffusers]"') from None
    return diffusers


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` as a reddiff network ``network(x, t) -> prediction``.

    Args:
        unet: the model.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        cfg = unet.config
        #: image sides must be multiples of this (one halving per down block but the last).
        self.size_multiple = 2 ** (len(cfg.block_out_channels) - 1)
        self.in_channels = int(cfg.in_channels)
        if cfg.get("num_class_embeds") or cfg.get("class_embed_type"):
            raise CheckpointError("class-conditional diffusers UNets are not supported yet (they need class labels)")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "REDDIFF_OFFLINE"))


#: what a pixel model's snapshot needs: its configs and safetensors weights (and model cards).
PIXEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.md"]


def resolve_diffusers_folder(spec: str, progress: bool = True, allow: list[str] | None = None,
                             ignore: list[str] | None = None) -> Path:
    """The local folder of ``spec``: an existing folder, or a hub model id fetched into (or found in) the
    ``huggingface_hub`` cache (only the files matching ``allow``, default :data:`PIXEL_FILES`, and not ``ignore``).

    Raises:
        CheckpointError: a path that is not a folder, or a model id that is neither cached nor downloadable (offline,
            unknown, no network): the message names the cache folder.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"diffusers prior {spec!r} is a file; give the model's folder or a hub model id")
    looks_like_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not looks_like_id:
        raise CheckpointError(f"no folder {spec!r}; give a diffusers model folder or a hub model id such as "
                              "google/ddpm-cat-256")
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:
        raise CheckpointError('diffusers priors need huggingface_hub: pip install "reddiff[diffusers]"') from None
    offline = _offline()
    if not progress:
        disable_progress_bars()
    try:
        folder = snapshot_download(spec, local_files_only=offline, allow_patterns=allow or PIXEL_FILES,
                                   ignore_patterns=ignore)
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; all mean "not available here"
        where = constants.HF_HUB_CACHE
        why = "offline (HF_HUB_OFFLINE/REDDIFF_OFFLINE is set) and not cached" if offline else one_line(exc)
        raise CheckpointError(f"diffusers model {spec!r} is not available: {why}; the hub cache is {where} "
                              "(download it there, or pass a local folder)") from None
    finally:
        if not progress:
            enable_progress_bars()
    return Path(folder)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a damaged or non-object file is one CheckpointError."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def _components(folder: Path) -> tuple[Path, Path]:
    """``(unet folder, scheduler folder)`` of a pipeline or model folder."""
    if (folder / "model_index.json").is_file():
        unet, sched = folder / "unet", folder / "scheduler"
        index = _read_json(folder / "model_index.json")
        if "unet" not in index:
            raise CheckpointError(f"{folder} is a diffusers pipeline without a unet "
                                  f"(it has: {', '.join(k for k in index if not k.startswith('_'))})")
    else:
        unet = folder
        sched = folder / "scheduler" if (folder / "scheduler" / "scheduler_config.json").is_file() else folder
    if not (unet / "config.json").is_file():
        raise CheckpointError(f"no UNet config in {unet} (expected config.json of a UNet2DModel)")
    if not (sched / "scheduler_config.json").is_file():
        raise CheckpointError(f"no scheduler config for {folder}: expected scheduler_config.json beside the model or "
                              "in scheduler/ (it says how the model was trained)")
    return unet, sched


def scheduler_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The prior's settings (``schedule``, ``prediction``, ``learned_sigma``, ``clip_denoised``, ``network_time``,
    and the DDIM conventions ``steps_offset`` and ``final_abar``: see :class:`reddiff.DiffusionPrior`) from a
    complete diffusers scheduler config (``_class_name`` included).

    Raises:
        CheckpointError: a scheduler reddiff cannot express (unknown class, sigmoid betas, zero terminal SNR).
    """
    from ..schedule import FlowSchedule, TabulatedSchedule, VPSchedule

    name = config.get("_class_name", "")
    if name in _FLOW_SCHEDULERS:
        steps = float(config.get("num_train_timesteps", 1000))
        return {"schedule": FlowSchedule(), "prediction": "flow", "learned_sigma": False, "clip_denoised": False,
                "network_time": _Scaled(steps), "steps_offset": 0, "final_abar": 1.0}
    if name not in _VP_SCHEDULERS:
        raise CheckpointError(f"scheduler {name or '(no _class_name)'} is not supported; accepted: "
                              f"{', '.join(_VP_SCHEDULERS + _FLOW_SCHEDULERS)}")
    if config.get("rescale_betas_zero_snr"):
        raise CheckpointError("rescale_betas_zero_snr is not supported: its last timestep has no signal (infinite "
                              "noise-to-signal ratio)")
    if config.get("thresholding"):
        raise CheckpointError("thresholding (dynamic thresholding of the clean estimate) is not supported; a "
                              "scheduler config with thresholding false, or clip_sample, is")
    try:
        n = int(config.get("num_train_timesteps", 1000))
        clip_range = float(config.get("clip_sample_range", 1.0))
        if config.get("trained_betas") is not None:
            betas = torch.as_tensor(config["trained_betas"], dtype=torch.float32).flatten()
        else:
            betas = None
            beta_range = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    except (TypeError, ValueError):
        raise CheckpointError("the scheduler config has a malformed num_train_timesteps, clip_sample_range, "
                              "beta_start, beta_end or trained_betas (numbers expected)") from None
    if betas is not None:
        if len(betas) != n or not bool(((betas > 0) & (betas < 1)).all()):
            raise CheckpointError(f"trained_betas must be {n} numbers (num_train_timesteps) strictly between 0 and 1, "
                                  f"got {len(betas)} in [{float(betas.min()):g}, {float(betas.max()):g}]")
        abar = torch.cumprod(1 - betas, 0).to(torch.float64)
        schedule: Any = TabulatedSchedule(abar.sqrt(), (1 - abar).sqrt(), "vp")
    else:
        kind = _BETAS.get(config.get("beta_schedule", "linear"))
        if kind is None:
            raise CheckpointError(f"beta_schedule {config.get('beta_schedule')!r} is not supported; accepted: "
                                  f"{', '.join(_BETAS)}")
        schedule = VPSchedule(kind, n, *beta_range, float32=True)  # the table diffusers trains and samples with
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise CheckpointError(f"prediction_type {prediction!r} is not supported; accepted: epsilon, sample, "
                              "v_prediction")
    clip = bool(config.get("clip_sample", False))
    if clip and clip_range != 1.0:
        raise CheckpointError(f"clip_sample_range {clip_range:g} is not supported: reddiff clips the clean estimate "
                              "to the image range [-1, 1] (clip_sample_range 1) or not at all")
    learned = config.get("variance_type") in ("learned", "learned_range")
    network_time = None
    if name == "EulerDiscreteScheduler" and config.get("timestep_type") == "continuous" and \
            prediction == "v_prediction":  # diffusers feeds such a network 0.25 log(sigma_t), not t
        network_time = _LogSigma(schedule)
    try:
        offset = int(config.get("steps_offset", 0) or 0)
    except (TypeError, ValueError):
        raise CheckpointError(f"steps_offset must be an integer, got {config.get('steps_offset')!r}") from None
    final = 1.0 if config.get("set_alpha_to_one", True) else float(schedule.abar_of(0))
    return {"schedule": schedule, "prediction": prediction, "learned_sigma": learned, "clip_denoised": clip,
            "network_time": network_time, "steps_offset": offset, "final_abar": final}


def safetensors_weights(folder: Path) -> Path:
    """The weights file diffusers' or transformers' ``from_pretrained`` reads in a component folder (the plain
    safetensors file, or the index of a sharded one).

    Raises:
        CheckpointError: no safetensors weights (pickled ``.bin`` weights alone are refused: never unpickled).
    """
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        what = f"only pickled weights ({', '.join(pickled)}), which reddiff never loads" if pickled else "no weights"
        raise CheckpointError(f"{folder} has {what}; save the model with safetensors (save_pretrained does by "
                              "default)")
    names = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
             "model.safetensors", "model.safetensors.index.json")
    return next((folder / n for n in names if (folder / n).is_file()), weights[0])


def read_scheduler(sched_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings, config)``: the prior's settings (:func:`scheduler_settings`) from ``scheduler_config.json`` in
    ``sched_dir``, and that config completed with the scheduler class's own defaults.

    Raises:
        CheckpointError: an unreadable or unsupported scheduler config, in one line.
    """
    diffusers = _diffusers()
    sched_config = _read_json(sched_dir / "scheduler_config.json")
    name = str(sched_config.get("_class_name", ""))
    scheduler_settings(sched_config)  # reddiff's one-line refusals before diffusers reads the config
    sched_cls = getattr(diffusers, name, None)
    if sched_cls is not None:  # complete the saved config with the scheduler's own defaults
        try:
            sched_config = {**dict(sched_cls.from_config(sched_config).config), "_class_name": name}
        except Exception as exc:  # noqa: BLE001 - diffusers rejects a bad config with many types
            raise CheckpointError(f"diffusers cannot read {sched_dir / 'scheduler_config.json'}: "
                                  f"{one_line(exc)}") from None
    return scheduler_settings(sched_config), sched_config


class _LogSigma:
    """``t -> 0.25 log(sigma_t / alpha_t)`` at a discrete schedule's integer times (diffusers' continuous Euler
    timesteps for v-prediction models)."""

    def __init__(self, schedule: Any) -> None:
        self.table = 0.25 * torch.log(((1 - schedule.abar) / schedule.abar).sqrt())

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.table.to(t.device)[t.long()].to(torch.float32)


class _Scaled:
    """``t -> t * factor`` (a picklable network-time map)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.factor


def load_diffusers_prior(spec: str, device: torch.device | str | None = None, progress: bool = True) -> Any:
    """A :class:`reddiff.DiffusionPrior` from a diffusers folder or hub id (``spec`` without the ``diffusers:``
    prefix; see the module docstring).

    Raises:
        CheckpointError: one line for a missing folder or model, a missing component, an unsupported model or
            scheduler, pickled weights only, or diffusers not installed.
    """
    from ..prior import DiffusionPrior
    from .loading import file_sha256

    diffusers = _diffusers()
    folder = resolve_diffusers_folder(spec, progress)
    unet_dir, sched_dir = _components(folder)
    config = _read_json(unet_dir / "config.json")
    if config.get("_class_name") != "UNet2DModel":
        raise CheckpointError(f"{unet_dir} holds a {config.get('_class_name')!r}; diffusers pixel priors are "
                              "UNet2DModel (latent and text-conditioned models are not supported yet)")
    loaded = safetensors_weights(unet_dir)
    settings, sched_config = read_scheduler(sched_dir)
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as exc:  # noqa: BLE001 - a damaged model folder raises many types
        raise CheckpointError(f"cannot load the UNet in {unet_dir}: {one_line(exc)}") from None
    unet.eval().requires_grad_(False)
    network = DiffusersUNet(unet)
    if settings["learned_sigma"] and int(unet.config.out_channels) != 2 * network.in_channels:
        raise CheckpointError(f"the scheduler says learned variances but the UNet has {unet.config.out_channels} "
                              f"output channels for {network.in_channels} input channels")
    info = {"name": f"{PREFIX}{spec}", "path": str(folder), "route": "diffusers", "sha256": file_sha256(loaded),
            "config": dict(unet.config), "scheduler": {k: v for k, v in sched_config.items() if not k.startswith("_")
                                                       or k == "_class_name"},
            "learned_sigma": settings["learned_sigma"]}
    prior = DiffusionPrior(network, settings["schedule"], learned_sigma=settings["learned_sigma"], info=info,
                           prediction=settings["prediction"], network_time=settings["network_time"],
                           clip_denoised=settings["clip_denoised"])
    prior.steps_offset, prior.final_abar = settings["steps_offset"], settings["final_abar"]
    return prior.to(device) if device is not None else prior
