"""What a training run keeps on disk: the resumable checkpoint, the exported prior and the loss curve.

The checkpoint is a plain ``torch.save`` dictionary of tensors, numbers and JSON strings (no pickled code), read
back with ``torch.load(weights_only=True)``; every file is written atomically, so an interrupted write leaves the
previous version in place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ReddiffError
from ...io import atomic_path
from ..data import CropSampler
from .config import TrainConfig

__all__ = ["CHECKPOINT", "EXPORT", "TrainState", "save_checkpoint", "read_checkpoint", "export_prior",
           "plot_loss_curve"]

#: File name of the resumable checkpoint inside the output folder.
CHECKPOINT = "checkpoint.pt"
#: File name of the exported EMA weights (with ``prior.json`` beside it).
EXPORT = "prior.safetensors"

#: Settings a resumed run must share with its checkpoint (the others may change between phases).
RESUME_KEYS = ("model", "batch_size", "crop", "data", "seed", "deadleaves")


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
    """

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    sampler: CropSampler
    history: list[tuple[int, float]] = field(default_factory=list)
    step: int = 0


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
    state.step = int(payload["step"])


def export_prior(state: TrainState, path: Path) -> Path:
    """Save the EMA weights in float32 as ``path`` (safetensors) + ``prior.json``, readable by ``load_prior``."""
    from ...networks.loading import save_network

    return save_network(state.ema.cpu().float(), path)


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
