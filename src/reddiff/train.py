"""DDPM ε-prediction training of the ADM network (``reddiff train``).

Loss (Ho et al. 2020, eq. 14, "L_simple"): ``E_{x0, t, eps} ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
t)||^2`` with ``t`` uniform over ``0 .. T-1`` on the linear schedule, T = 1000. AdamW, gradient clipping, an
exponential moving average (EMA) of the weights (the EMA weights are exported), periodic checkpoints that
``resume`` continues exactly, a loss curve, and export to ``prior.safetensors`` + ``prior.json`` that
:func:`reddiff.load_prior` reads. On the CPU a run is deterministic for a given seed.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ReddiffError
from .schedule import VPSchedule

__all__ = ["TrainConfig", "DEFAULT_MODEL", "train", "plot_loss_curve"]

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

CHECKPOINT = "checkpoint.pt"
EXPORT = "prior.safetensors"


@dataclass
class TrainConfig:
    """Training settings (the fields are recorded in the checkpoint and the model card).

    Args:
        out: output folder (checkpoint, exported prior, loss curve).
        data: ``builtin`` (the offline scikit-image / scikit-learn set, see :mod:`reddiff.data`) or a folder.
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
        model: ADM ``create_model`` arguments.
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
    model: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL))

    def validate(self) -> None:
        """Raise one clear error for a bad setting."""
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
        if self.grad_clip <= 0 or self.warmup < 0 or self.weight_decay < 0:
            raise ReddiffError("grad_clip must be > 0, warmup and weight_decay >= 0")


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


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReddiffError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
    return dev


def _images(cfg: TrainConfig) -> list[np.ndarray]:
    from .data import builtin_training_images, folder_images

    pairs = builtin_training_images() if cfg.data == "builtin" else folder_images(cfg.data)
    return [im for _, im in pairs]


def plot_loss_curve(history: list[tuple[int, float]], path: Path, title: str = "training loss") -> Path | None:
    """Write the loss curve (raw and smoothed) as a PNG; returns None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from .io import atomic_path

    steps = np.array([s for s, _ in history], dtype=float)
    loss = np.array([v for _, v in history], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=0.5, alpha=0.35, label="per step")
    if len(loss) >= 20:
        k = max(len(loss) // 50, 10)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("ε-MSE")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue training) a diffusion prior and export its EMA weights.

    Args:
        cfg: the settings.
        resume: continue from ``cfg.out/checkpoint.pt`` (weights, EMA, optimizer, random states, loss history);
            ``cfg.steps`` may be raised to train longer.
        progress: show a progress bar with the loss.
        on_step: called with ``(step, loss)`` after every step.

    Returns:
        A summary: steps done, final smoothed loss, seconds, paths of the checkpoint, export and loss curve.

    Raises:
        ReddiffError: bad settings, existing outputs without ``resume``, or a checkpoint from other settings.
    """
    from tqdm.auto import tqdm

    from .data import CropSampler, dead_leaves
    from .io import atomic_path, write_json
    from .networks.adm import create_model
    from .networks.loading import save_network

    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ReddiffError(f"output path {out} is a file; give a folder")
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise ReddiffError(f"{ckpt_path} exists; pass --resume to continue it or choose another --output")
    if resume and not ckpt_path.exists():
        raise ReddiffError(f"nothing to resume: {ckpt_path} does not exist")
    device = _device(cfg.device)

    state: dict[str, Any] | None = None
    if resume:
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user error
            raise ReddiffError(f"cannot read checkpoint {ckpt_path} ({exc.__class__.__name__})") from None
        saved = json.loads(state["config"])
        for key in ("model", "batch_size", "crop", "data", "seed", "deadleaves"):
            if saved[key] != getattr(cfg, key):
                raise ReddiffError(
                    f"--resume with a different {key} ({getattr(cfg, key)!r}; the checkpoint has {saved[key]!r})"
                )

    torch_gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # initial weights: seeded locally, the caller's global state is restored
        model = create_model(**cfg.model)
    model.to(device).train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))

    extra: list[np.ndarray] = []
    if cfg.deadleaves > 0:
        leaf_rng = np.random.default_rng(cfg.seed + 7919)
        extra = [dead_leaves(max(cfg.crop * 2, 128), leaf_rng) for _ in range(cfg.deadleaves_images)]
    sampler = CropSampler(_images(cfg), cfg.crop, seed=cfg.seed, extra=extra, extra_prob=cfg.deadleaves)
    history: list[tuple[int, float]] = []
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        torch_gen.set_state(state["torch_generator"])
        sampler.load_state_dict(json.loads(state["sampler"]))
        history = [(int(s), float(v)) for s, v in zip(state["history_steps"].tolist(), state["history_loss"].tolist())]
        step = int(state["step"])

    abar = VPSchedule().abar.to(torch.float32)
    T = abar.numel()
    autocast = device.type == "cuda"
    out.mkdir(parents=True, exist_ok=True)

    def save_checkpoint() -> None:
        payload = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "torch_generator": torch_gen.get_state(),
            "sampler": json.dumps(sampler.state_dict()),
            "history_steps": torch.tensor([s for s, _ in history], dtype=torch.int64),
            "history_loss": torch.tensor([v for _, v in history], dtype=torch.float64),
            "step": step,
            "config": json.dumps(asdict(cfg)),
        }
        with atomic_path(ckpt_path) as tmp:
            torch.save(payload, tmp)

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not progress, dynamic_ncols=True)
    while step < cfg.steps:
        x0 = sampler.sample(cfg.batch_size).to(device)
        t = draw_timesteps(cfg.batch_size, T, cfg.low_t, cfg.low_t_max, torch_gen)
        eps = torch.randn(x0.shape, generator=torch_gen).to(device)
        a = abar[t].view(-1, 1, 1, 1).to(device)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
            pred = model(x_t, t.to(device))
        loss = (pred.float() - eps).pow(2).mean()
        if not torch.isfinite(loss):
            raise ReddiffError(f"training diverged at step {step} (loss {float(loss)}); try a smaller --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # short warm-up of the average
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
        step += 1
        value = float(loss.detach())
        history.append((step, value))
        bar.update(1)
        if step % 10 == 0:
            recent = [v for _, v in history[-100:]]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if on_step is not None:
            on_step(step, value)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint()
    bar.close()

    export = save_network(ema.cpu().float(), out / EXPORT)
    curve = plot_loss_curve(history, out / "loss.png")
    recent = [v for _, v in history[-200:]]
    summary = {
        "steps": step,
        "final_loss": sum(recent) / max(len(recent), 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "checkpoint": str(ckpt_path),
        "export": str(export),
        "loss_curve": str(curve) if curve else None,
        "config": asdict(cfg),
    }
    write_json(summary, out / "train.json")
    return summary
