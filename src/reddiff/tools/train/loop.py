"""Setting a run up (or resuming it), one training step, and the :func:`train` driver.

Loss (Ho et al. 2020, eq. 14, "L_simple"): ``E_{x0, t, eps} ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
t)||^2`` with ``t`` drawn by :func:`~reddiff.tools.train.config.draw_timesteps` on the linear schedule, T = 1000.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ReddiffError
from ...schedule import VPSchedule
from ..data import CropSampler, builtin_training_images, dead_leaves, folder_images
from .checkpoint import (
    CHECKPOINT,
    EXPORT,
    TrainState,
    export_prior,
    plot_loss_curve,
    read_checkpoint,
    restore,
    save_checkpoint,
)
from .config import TrainConfig, draw_timesteps, learning_rate, resolve_device

__all__ = ["setup", "train_step", "train", "estimate_line"]

#: The time estimate is said once, after :data:`ESTIMATE_STEPS` timed steps (the first step, which pays for warm-up,
#: is not timed), for runs of at least :data:`ESTIMATE_MIN_STEPS` steps with at least :data:`ESTIMATE_MIN_SECONDS` left.
ESTIMATE_STEPS = 5
ESTIMATE_MIN_STEPS = 50
ESTIMATE_MIN_SECONDS = 60.0


def _images(cfg: TrainConfig) -> list[np.ndarray]:
    pairs = builtin_training_images() if cfg.data == "builtin" else folder_images(cfg.data)
    return [im for _, im in pairs]


def _check_outputs(out: Path, resume: bool) -> Path:
    """The checkpoint path, after checking that ``out`` may be written (or resumed) as asked."""
    if out.exists() and not out.is_dir():
        raise ReddiffError(f"output path {out} is a file; give a folder")
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ReddiffError(f"cannot create the output folder {out}: {parent} is not a writable folder")
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise ReddiffError(f"{ckpt_path} exists; pass --resume to continue it or choose another --output")
    if resume and not ckpt_path.exists():
        raise ReddiffError(f"nothing to resume: {ckpt_path} does not exist")
    return ckpt_path


def setup(cfg: TrainConfig, device: torch.device, checkpoint: Path | None = None) -> TrainState:
    """Build the network (seeded by ``cfg.seed``), its EMA, the optimizer and the crop sampler.

    Args:
        cfg: the settings.
        device: where the network lives.
        checkpoint: continue this checkpoint (it must have been trained with compatible settings).

    Returns:
        The state at step 0, or at the checkpoint's step.

    Raises:
        ReddiffError: unreadable training images or checkpoint, or a checkpoint from other settings.
    """
    from ...networks.adm import create_model

    payload = read_checkpoint(checkpoint, cfg) if checkpoint is not None else None
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
    state = TrainState(model, ema, opt, torch.Generator().manual_seed(cfg.seed), sampler)
    if payload is not None:
        restore(state, payload)
    return state


def train_step(state: TrainState, cfg: TrainConfig, abar: torch.Tensor) -> float:
    """One optimisation step of the ε-MSE loss, the EMA update, and ``state.step += 1``.

    Args:
        state: the run (changed in place).
        cfg: the settings (batch size, timestep draw, learning-rate schedule, clipping, EMA decay).
        abar: the cumulative products ``abar_t`` of the noise schedule, float32 on the CPU.

    Returns:
        The step's loss.

    Raises:
        ReddiffError: the loss is not finite (the weights are left as they were).
    """
    model, opt, step = state.model, state.optimizer, state.step
    device = next(model.parameters()).device
    x0 = state.sampler.sample(cfg.batch_size).to(device)
    t = draw_timesteps(cfg.batch_size, abar.numel(), cfg.low_t, cfg.low_t_max, state.generator)
    eps = torch.randn(x0.shape, generator=state.generator).to(device)
    a = abar[t].view(-1, 1, 1, 1).to(device)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    for group in opt.param_groups:
        group["lr"] = learning_rate(cfg, step)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
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
        for pe, pm in zip(state.ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)
        for be, bm in zip(state.ema.buffers(), model.buffers()):
            be.copy_(bm)
    value = float(loss.detach())
    state.step = step + 1
    state.history.append((state.step, value))
    return value


def _duration(seconds: float) -> str:
    if seconds < 90 * 60:
        return f"{max(round(seconds / 60), 1)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def estimate_line(seconds_per_step: float, steps: int, device: torch.device, resumed: bool = False) -> str:
    """The one-line time estimate of a run of ``steps`` steps, with a hint to use a GPU when on the CPU."""
    where = f"cpu ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)
    line = (f"train: {seconds_per_step:.3g} s/step on {where}: {steps:,}{' more' if resumed else ''} steps take about "
            f"{_duration(seconds_per_step * steps)}")
    return line + ("; use a CUDA GPU (--device cuda) for long runs" if device.type == "cpu" else "")


class _Estimate:
    """Times the steps after the first few of a run and says once how long the whole run takes."""

    def __init__(self, first: int, last: int, device: torch.device, say: Callable[[str], None]) -> None:
        self.first, self.last, self.device, self.say = first, last, device, say
        self.done = last - first < ESTIMATE_MIN_STEPS
        self.start = 0.0

    def tick(self, step: int) -> None:
        """Call after each step with the number of steps done."""
        if self.done:
            return
        if step == self.first + 1:
            self.start = time.perf_counter()
        elif step == self.first + 1 + ESTIMATE_STEPS:
            self.done = True
            per_step = (time.perf_counter() - self.start) / ESTIMATE_STEPS
            if per_step * (self.last - step) >= ESTIMATE_MIN_SECONDS:
                self.say(estimate_line(per_step, self.last - self.first, self.device, resumed=self.first > 0))


def _say_stderr(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)  # above a progress bar, not through it


def _mean_loss(history: list[tuple[int, float]], n: int) -> float:
    recent = [v for _, v in history[-n:]]
    return sum(recent) / max(len(recent), 1)


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue training) a diffusion prior and export its EMA weights.

    Args:
        cfg: the settings.
        resume: continue from ``cfg.out/checkpoint.pt`` (weights, EMA, optimizer, random states, loss history);
            ``cfg.steps`` may be raised to train longer.
        progress: show a progress bar with the loss.
        on_step: called with ``(step, loss)`` after every step.
        say: receives the one-line time estimate said after the first few steps of a long run (default: printed
            to stderr).

    Returns:
        A summary: steps done, final smoothed loss, seconds, paths of the checkpoint, export and loss curve.

    Raises:
        ReddiffError: bad settings, existing outputs without ``resume``, or a checkpoint from other settings.
    """
    from tqdm.auto import tqdm

    from ...io import write_json

    cfg.validate()
    out = Path(cfg.out)
    ckpt_path = _check_outputs(out, resume)
    device = resolve_device(cfg.device)
    state = setup(cfg, device, ckpt_path if resume else None)
    abar = VPSchedule().abar.to(torch.float32)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    estimate = _Estimate(state.step, cfg.steps, device, say or _say_stderr)
    bar = tqdm(total=cfg.steps, initial=state.step, desc="train", disable=not progress, dynamic_ncols=True)
    while state.step < cfg.steps:
        value = train_step(state, cfg, abar)
        bar.update(1)
        if state.step % 10 == 0:
            bar.set_postfix(loss=f"{_mean_loss(state.history, 100):.4f}")
        estimate.tick(state.step)
        if on_step is not None:
            on_step(state.step, value)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            save_checkpoint(state, cfg, ckpt_path)
    bar.close()

    export = export_prior(state, out / EXPORT)
    curve = plot_loss_curve(state.history, out / "loss.png")
    summary = {
        "steps": state.step,
        "final_loss": _mean_loss(state.history, 200),
        "seconds": round(time.perf_counter() - t0, 2),
        "device": str(device),
        "parameters": sum(p.numel() for p in state.model.parameters()),
        "checkpoint": str(ckpt_path),
        "export": str(export),
        "loss_curve": str(curve) if curve else None,
        "config": asdict(cfg),
    }
    write_json(summary, out / "train.json")
    return summary
