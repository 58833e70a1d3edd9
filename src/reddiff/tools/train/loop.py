"""Setting a run up (or resuming it), one training step, and the :func:`train` driver.

Loss, objective ``eps`` (Ho et al. 2020, eq. 14, "L_simple"): ``E_{x0, t, eps} ||eps - eps_theta(sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps, t)||^2`` with ``t`` drawn by :func:`~reddiff.tools.train.config.draw_timesteps` on the linear
schedule, T = 1000; objective ``flow`` (rectified flow): ``E ||(eps - x0) - v_theta((1 - t) x0 + t eps, 1000 t)||^2``
with ``t`` continuous in [0, 1) (see :func:`noisy_batch`).
"""

from __future__ import annotations

import copy
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
    EXPORT,
    TrainState,
    check_outputs,
    export_prior,
    folders_to_create,
    interrupted,
    plot_loss_curve,
    read_checkpoint,
    remove_empty_folders,
    restore,
    save_checkpoint,
)
from .config import TrainConfig, build_network, draw_timesteps, learning_rate, resolve_device
from .estimate import Estimate, say_stderr

__all__ = ["setup", "noisy_batch", "train_step", "train"]


def _images(cfg: TrainConfig) -> list[np.ndarray]:
    pairs = builtin_training_images() if cfg.data == "builtin" else folder_images(cfg.data)
    return [im for _, im in pairs]


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
    payload = read_checkpoint(checkpoint, cfg) if checkpoint is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # initial weights: seeded locally, the caller's global state is restored
        model = build_network(cfg)
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


def noisy_batch(cfg: TrainConfig, x0: torch.Tensor, abar: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, the network's time input, the regression target)`` of one batch for the objective.

    ``eps``: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` at integer ``t`` (Ho et al. 2020), target ``eps``.
    ``flow``: ``x_t = (1 - t) x0 + t eps`` at ``t = (k + u) / T`` (``k`` drawn as the integer timesteps are, ``u``
    uniform in [0, 1)), time input ``1000 t``, target the velocity ``eps - x0`` (rectified flow).
    """
    device = x0.device
    k = draw_timesteps(x0.shape[0], abar.numel(), cfg.low_t, cfg.low_t_max, generator)
    if cfg.objective == "flow":
        t = (k.to(torch.float32) + torch.rand(k.shape, generator=generator)) / abar.numel()
        eps = torch.randn(x0.shape, generator=generator).to(device)
        tt = t.view(-1, 1, 1, 1).to(device)
        return (1 - tt) * x0 + tt * eps, (1000.0 * t).to(device), eps - x0
    eps = torch.randn(x0.shape, generator=generator).to(device)
    a = abar[k].view(-1, 1, 1, 1).to(device)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, k.to(device), eps


def train_step(state: TrainState, cfg: TrainConfig, abar: torch.Tensor) -> float:
    """One optimisation step of the ε-MSE loss (Ho et al. 2020, eq. 14), the EMA update, and ``state.step += 1``.

    Args:
        state: the run (changed in place).
        cfg: the settings (batch size, timestep draw, learning-rate schedule, clipping, EMA decay).
        abar: the cumulative products ``abar_t`` of the noise schedule, float32 on the CPU.

    Returns:
        The step's loss.

    Raises:
        ReddiffError: the loss is not finite (the weights are left as they were).
        KeyboardInterrupt: before the weights change, the random states are rewound and ``state`` is as it was;
            while they change, ``state.updating`` stays True (the state is torn and must not be saved).
    """
    model, opt, step = state.model, state.optimizer, state.step
    device = next(model.parameters()).device
    rewind = state.sampler.state_dict(), state.generator.get_state()
    try:
        x0 = state.sampler.sample(cfg.batch_size).to(device)
        x_t, time, target = noisy_batch(cfg, x0, abar, state.generator)
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = model(x_t, time)
        loss = (pred.float() - target).pow(2).mean()
        if not torch.isfinite(loss):
            raise ReddiffError(f"training diverged at step {step} (loss {float(loss.detach())}); try a smaller --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    except KeyboardInterrupt:
        state.sampler.load_state_dict(rewind[0])
        state.generator.set_state(rewind[1])
        raise
    value = float(loss.detach())
    state.updating = True
    opt.step()
    with torch.no_grad():
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # short warm-up of the average
        for pe, pm in zip(state.ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)
        for be, bm in zip(state.ema.buffers(), model.buffers()):
            be.copy_(bm)
    state.step = step + 1
    state.history.append((state.step, value))
    state.updating = False
    return value


def _mean_loss(history: list[tuple[int, float]], n: int) -> float:
    recent = [v for _, v in history[-n:]]
    return sum(recent) / max(len(recent), 1)


def _run(state: TrainState, cfg: TrainConfig, ckpt_path: Path, progress: bool,
         on_step: Callable[[int, float], None] | None, estimate: Estimate) -> None:
    """Step until ``cfg.steps``, with the progress bar, the callbacks and the periodic checkpoints."""
    from tqdm.auto import tqdm

    abar = VPSchedule().abar.to(torch.float32)
    with tqdm(total=cfg.steps, initial=state.step, desc="train", disable=not progress, dynamic_ncols=True) as bar:
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


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue training) a diffusion prior and export its EMA weights.

    Every setting is checked before anything is written. Ctrl-C (or SIGTERM turned into ``KeyboardInterrupt``)
    saves the steps done since the last checkpoint, or, before the first step of a new run, removes the folders
    the run created; either way it raises :class:`~reddiff.errors.Interrupted` with one line saying so.

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
        ReddiffError: bad settings, existing outputs without ``resume``, a checkpoint from other settings, or a
            diverged loss.
        Interrupted: Ctrl-C or SIGTERM; its message says what was kept.
    """
    from ...io import write_json

    cfg.validate()
    out = Path(cfg.out)
    ckpt_path = check_outputs(out, resume)
    device = resolve_device(cfg.device)
    created = folders_to_create(out)
    state: TrainState | None = None
    try:
        state = setup(cfg, device, ckpt_path if resume else None)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        _run(state, cfg, ckpt_path, progress, on_step, Estimate(state.step, cfg.steps, device, say or say_stderr))
        export = export_prior(state, out / EXPORT, cfg.objective)
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
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM where the caller turns it into one (the cause)
        raise interrupted(state, cfg, ckpt_path, created) from exc
    except BaseException:
        if state is None or state.saved_step == 0:
            remove_empty_folders(created)
        raise
