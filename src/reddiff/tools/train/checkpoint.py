"""What a training run keeps on disk: the output folder, the resumable checkpoint, the exported prior, the loss
curve, and what an interrupted run leaves behind.

The checkpoint is a plain ``torch.save`` dictionary of tensors, numbers and JSON strings (no pickled code), read
back with ``torch.load(weights_only=True)``; every file is written atomically, so an interrupted write leaves the
previous version in place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import Interrupted, ReddiffError
from ...io import atomic_path
from ..data import CropSampler
from .config import TrainConfig

__all__ = ["CHECKPOINT", "EXPORT", "TrainState", "check_outputs", "save_checkpoint", "read_checkpoint", "restore",
           "export_prior", "plot_loss_curve", "folders_to_create", "remove_empty_folders", "interrupted"]

#: File name of the resumable checkpoint inside the output folder.
CHECKPOINT = "checkpoint.pt"
#: File name of the exported EMA weights (with ``prior.json`` beside it).
EXPORT = "prior.safetensors"

#: Settings a resumed run must share with its checkpoint (the others may change between phases).
RESUME_KEYS = ("model", "batch_size", "crop", "data", "seed", "deadleaves", "arch", "objective")


@dataclass
class TrainState:
    """Everything a step changes and a checkpoint restores.

    Args:
        model: the trained network.
        ema: its exponential moving average (the exported weights).
        optimizer: AdamW over ``model``'s parameters.
        generator: the torch generator of timesteps and noise.
        sampler: the crop sampler (numpy generator inside).
        history: ``(step, loss)`` of every step so far.
        step: steps done.
        start: the step this run started from (the resumed checkpoint's, or 0).
        saved_step: the step of the checkpoint on disk (0: none yet).
        updating: True while a step changes the weights; the state is then between two steps and is not saved.
    """

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    sampler: CropSampler
    history: list[tuple[int, float]] = field(default_factory=list)
    step: int = 0
    start: int = 0
    saved_step: int = 0
    updating: bool = False


def check_outputs(out: Path, resume: bool) -> Path:
    """The checkpoint path, after checking that ``out`` can be created (or resumed) as asked.

    Raises:
        ReddiffError: ``out`` is a file or cannot be created, holds a checkpoint without ``resume``, or has none
            to resume.
    """
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


def save_checkpoint(state: TrainState, cfg: TrainConfig, path: Path) -> None:
    """Write ``state`` and ``cfg`` to ``path`` atomically."""
    payload = {
        "model": state.model.state_dict(),
        "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "torch_generator": state.generator.get_state(),
        "sampler": json.dumps(state.sampler.state_dict()),
        "history_steps": torch.tensor([s for s, _ in state.history], dtype=torch.int64),
        "history_loss": torch.tensor([v for _, v in state.history], dtype=torch.float64),
        "step": state.step,
        "config": json.dumps(asdict(cfg)),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    state.saved_step = state.step


def read_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and check that ``cfg`` may continue it.

    Raises:
        ReddiffError: the file cannot be read, or it was trained with another value of a :data:`RESUME_KEYS` setting.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user error
        raise ReddiffError(f"cannot read checkpoint {path} ({exc.__class__.__name__})") from None
    saved = json.loads(payload["config"])
    for key in RESUME_KEYS:
        if saved[key] != getattr(cfg, key):
            raise ReddiffError(
                f"--resume with a different {key} ({getattr(cfg, key)!r}; the checkpoint has {saved[key]!r})"
            )
    return payload


def restore(state: TrainState, payload: dict[str, Any]) -> None:
    """Load a payload returned by :func:`read_checkpoint` into ``state``."""
    state.model.load_state_dict(payload["model"])
    state.ema.load_state_dict(payload["ema"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.generator.set_state(payload["torch_generator"])
    state.sampler.load_state_dict(json.loads(payload["sampler"]))
    steps, losses = payload["history_steps"].tolist(), payload["history_loss"].tolist()
    state.history = [(int(s), float(v)) for s, v in zip(steps, losses)]
    state.step = state.start = state.saved_step = int(payload["step"])


def export_prior(state: TrainState, path: Path, objective: str = "eps") -> Path:
    """Save the EMA weights in float32, readable by ``load_prior``: an ADM as ``path`` (safetensors) +
    ``prior.json``; a ``UNet2DModel`` as a diffusers folder ``path.parent / "diffusers"`` (unet, scheduler config,
    model_index.json) for ``--prior diffusers:FOLDER``; returns what to pass to ``--prior`` (without the prefix)."""
    from ...networks.diffusers_route import DiffusersUNet, _diffusers
    from ...networks.loading import save_network

    ema = state.ema.cpu().float()
    if not isinstance(ema, DiffusersUNet):
        return save_network(ema, path)
    diffusers = _diffusers()
    folder = path.parent / "diffusers"
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler() if objective == "flow" else diffusers.DDPMScheduler(
        beta_schedule="linear", prediction_type="epsilon", clip_sample=False)
    tmp = path.parent / ".diffusers.part"
    shutil.rmtree(tmp, ignore_errors=True)
    diffusers.DDPMPipeline(unet=ema.unet, scheduler=scheduler).save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def plot_loss_curve(history: list[tuple[int, float]], path: Path, title: str = "training loss") -> Path | None:
    """Write the loss curve (raw and smoothed) as a PNG; returns None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None

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


def folders_to_create(out: Path) -> list[Path]:
    """The folders that creating ``out`` makes, deepest first (empty when it exists)."""
    return [p for p in (out, *out.parents) if not p.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove the folders, deepest first, that are (still) empty; a folder with anything in it stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def interrupted(state: TrainState | None, cfg: TrainConfig, path: Path, created: list[Path]) -> Interrupted:
    """Keep what a run stopped by Ctrl-C or SIGTERM did, and say so.

    Steps done since the last checkpoint are saved to it (unless the stop came while the weights were changing);
    a new run stopped before its first step removes the folders it created, if nothing else was put in them.

    Args:
        state: the run (None when it stopped while being set up, before anything was written).
        cfg: its settings.
        path: its checkpoint.
        created: the folders it created (:func:`folders_to_create`).

    Returns:
        The exception to raise, carrying one line: where the run stopped, what was kept and how to go on.
    """
    again = "rerun with --resume to continue"
    if state is None and path.exists():
        return Interrupted(f"stopped before a new step; the checkpoint {path} is unchanged: {again}")
    if state is not None and not state.updating and state.step > state.saved_step:
        save_checkpoint(state, cfg, path)
    if state is None or state.saved_step == 0:
        remove_empty_folders(created)
        return Interrupted("stopped before the first step; nothing was saved")
    if state.step == state.start:
        return Interrupted(f"stopped before a new step; the checkpoint at step {state.start} in {path} is unchanged: "
                           f"{again}")
    if state.saved_step == state.step:
        return Interrupted(f"training stopped at step {state.step} of {cfg.steps}; checkpoint saved to {path}: {again}")
    return Interrupted(f"training stopped during step {state.step + 1} of {cfg.steps} as the weights changed; the "
                       f"checkpoint at step {state.saved_step} in {path} is kept: {again} from there")
