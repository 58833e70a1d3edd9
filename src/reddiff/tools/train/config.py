"""Training settings, the default network, the learning-rate schedule and the timestep draw."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import CheckpointError, ReddiffError

__all__ = ["DEFAULT_MODEL", "DEFAULT_UNET2D", "ARCHITECTURES", "OBJECTIVES", "TrainConfig", "build_network",
           "draw_timesteps", "learning_rate", "resolve_device"]

#: The networks ``reddiff train`` builds: guided-diffusion's ADM (exported as a reddiff prior), or diffusers'
#: ``UNet2DModel`` (exported as a diffusers folder, loaded with ``--prior diffusers:FOLDER``).
ARCHITECTURES = ("adm", "unet2d")
#: ``eps``: DDPM's ε-MSE on the VP schedule; ``flow``: rectified flow, the velocity ``eps - x0`` at
#: ``x_t = (1 - t) x0 + t eps`` (the network sees ``1000 t``, as diffusers' flow schedulers feed it).
OBJECTIVES = ("eps", "flow")

#: The architecture of the bundled prior: a compact, fully convolutional ADM (no attention), ~1.9 M parameters,
#: fast enough for 100 RED-diff steps on a 256x256 image in well under a minute on a 2-core CPU.
DEFAULT_MODEL: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,2,2,2",
    "attention_resolutions": "",
    "learn_sigma": False,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "dropout": 0.0,
}

#: A compact fully convolutional diffusers ``UNet2DModel`` of about the bundled prior's size (~1.5 M parameters).
DEFAULT_UNET2D: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64, 64],
    "down_block_types": ["DownBlock2D"] * 4,
    "up_block_types": ["UpBlock2D"] * 4,
    "norm_num_groups": 8,
    "add_attention": False,
}


@dataclass
class TrainConfig:
    """Training settings (the fields are recorded in the checkpoint and the model card).

    Args:
        out: output folder (checkpoint, exported prior, loss curve).
        data: ``builtin`` (the offline scikit-image / scikit-learn set, see :mod:`reddiff.tools.data`) or a folder.
        steps: total optimisation steps (a resumed run continues up to this number).
        batch_size: crops per step.
        crop: crop side in pixels.
        lr: AdamW learning rate (after a linear warm-up of ``warmup`` steps).
        weight_decay: AdamW weight decay.
        warmup: warm-up steps.
        ema_decay: EMA decay of the exported weights.
        grad_clip: gradient-norm clipping threshold.
        seed: seed of every random choice (crops, timesteps, noise, initial weights).
        checkpoint_every: steps between checkpoints.
        deadleaves: fraction of crops drawn from procedurally generated dead-leaves images (0 = none).
        deadleaves_images: how many dead-leaves images to generate.
        low_t: fraction of each batch whose timesteps are drawn from ``[0, low_t_max)`` instead of ``[0, T)``:
            more training signal where RED-diff's presets work (they start at t <= 100), while every t stays trained.
            It may change between resumed runs (a fine-tuning phase).
        low_t_max: upper end (exclusive) of the low-noise timestep range.
        cooldown: the learning rate decays linearly towards zero over the last ``cooldown`` steps of ``steps``
            (the last step uses ``lr / (cooldown + 1)``; 0 = a constant rate after warm-up). May change between
            resumed runs.
        device: ``auto`` (CUDA when available, with bf16 autocast), ``cpu`` or ``cuda[:N]``.
        model: the network's arguments: ADM ``create_model`` arguments, or ``UNet2DModel`` ones (None: the
            architecture's default).
        arch: ``adm`` or ``unet2d`` (see :data:`ARCHITECTURES`).
        objective: ``eps`` or ``flow`` (see :data:`OBJECTIVES`; ``flow`` needs ``unet2d``).
    """

    out: str
    data: str = "builtin"
    steps: int = 20000
    batch_size: int = 16
    crop: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    deadleaves: float = 0.0
    deadleaves_images: int = 32
    low_t: float = 0.0
    low_t_max: int = 200
    cooldown: int = 0
    device: str = "auto"
    model: dict[str, Any] | None = None
    arch: str = "adm"
    objective: str = "eps"

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = dict(DEFAULT_UNET2D if self.arch == "unet2d" else DEFAULT_MODEL)

    def validate(self) -> None:
        """Raise one clear error for a bad setting.

        Raises:
            ReddiffError: the first bad setting, what it was and what is accepted.
        """
        for name in ("steps", "batch_size", "crop", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ReddiffError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ReddiffError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ReddiffError(f"ema decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.deadleaves <= 1:
            raise ReddiffError(f"deadleaves must be a fraction in [0, 1], got {self.deadleaves}")
        if not 0 <= self.low_t <= 1:
            raise ReddiffError(f"low_t must be a fraction in [0, 1], got {self.low_t}")
        if not 0 <= int(self.cooldown) <= int(self.steps):
            raise ReddiffError(f"cooldown must be between 0 and steps ({self.steps}), got {self.cooldown}")
        if not 1 <= self.low_t_max <= 1000:
            raise ReddiffError(f"low_t_max must be in [1, 1000], got {self.low_t_max}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ReddiffError(f"grad_clip must be > 0, got {self.grad_clip}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ReddiffError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("warmup", "seed"):
            if int(getattr(self, name)) < 0:
                raise ReddiffError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.deadleaves > 0 and int(self.deadleaves_images) < 1:
            raise ReddiffError(f"deadleaves_images must be >= 1 when deadleaves > 0, got {self.deadleaves_images}")
        if self.arch not in ARCHITECTURES:
            raise ReddiffError(f"unknown architecture {self.arch!r}; accepted: {', '.join(ARCHITECTURES)}")
        if self.objective not in OBJECTIVES:
            raise ReddiffError(f"unknown objective {self.objective!r}; accepted: {', '.join(OBJECTIVES)}")
        if self.objective == "flow" and self.arch != "unet2d":
            raise ReddiffError("the flow objective exports a diffusers model: use --arch unet2d")
        resolve_device(self.device)
        self._check_network()

    def _check_network(self) -> None:
        """Build the network on the meta device (no memory, no time) and run it once on a crop-sized batch."""
        try:
            with torch.device("meta"):
                net = build_network(self)
        except CheckpointError:  # diffusers is not installed: its own message says what to do
            raise
        except Exception as exc:  # noqa: BLE001 - every failure here is a bad model setting
            raise ReddiffError(f"bad model settings {self.model}: {_first_line(exc)}") from None
        x = torch.empty(1, 3, self.crop, self.crop, device="meta")
        try:
            with torch.no_grad():
                pred = net(x, torch.zeros(1, device="meta"))
        except Exception as exc:  # noqa: BLE001 - the same: the network cannot take this crop
            multiple = getattr(net, "size_multiple", 1)
            if self.crop % multiple:
                raise ReddiffError(f"crop must be a multiple of {multiple} for this network, got {self.crop}") from None
            raise ReddiffError(f"the network cannot train on 3-channel {self.crop}x{self.crop} crops: "
                               f"{_first_line(exc)}") from None
        if pred.shape != x.shape:
            raise ReddiffError(f"the network predicts {pred.shape[1]} channels; training fits 3 "
                               "(learn_sigma must be false)")


def build_network(cfg: TrainConfig) -> torch.nn.Module:
    """The network of ``cfg``: an ADM from ``create_model``, or a diffusers ``UNet2DModel`` wrapped as
    ``network(x, t)``."""
    if cfg.arch == "adm":
        from ...networks.adm import create_model

        return create_model(**cfg.model)  # type: ignore[arg-type]
    from ...networks.diffusers_route import DiffusersUNet, _diffusers

    return DiffusersUNet(_diffusers().UNet2DModel(**cfg.model))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def resolve_device(spec: str) -> torch.device:
    """The torch device of a ``--device`` setting (``auto``: CUDA when available, else the CPU).

    Raises:
        ReddiffError: CUDA was asked for but is not available.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReddiffError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
    return dev


def draw_timesteps(batch: int, T: int, low_t: float, low_t_max: int, generator: torch.Generator) -> torch.Tensor:  # noqa: N803
    """Training timesteps: uniform over ``[0, T)``, except the first ``round(low_t * batch)`` of the batch, which
    are uniform over ``[0, min(low_t_max, T))``."""
    t = torch.randint(0, T, (batch,), generator=generator)
    n_low = round(low_t * batch)
    if n_low:
        t[:n_low] = torch.randint(0, min(low_t_max, T), (n_low,), generator=generator)
    return t


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The rate of step ``step`` (0-based): linear warm-up, constant, then a linear cooldown to 0 if asked."""
    rate = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
    start = cfg.steps - cfg.cooldown
    if cfg.cooldown and step >= start:
        rate *= (cfg.steps - step) / (cfg.cooldown + 1)
    return rate
