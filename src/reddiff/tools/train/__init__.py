"""DDPM ε-prediction training of the ADM network (``reddiff train``).

Loss (Ho et al. 2020, eq. 14, "L_simple") with ``t`` uniform over ``0 .. T-1`` on the linear schedule, T = 1000.
AdamW, gradient clipping, an exponential moving average (EMA) of the weights (the EMA weights are exported),
periodic checkpoints that ``resume`` continues exactly, a loss curve, and export to ``prior.safetensors`` +
``prior.json`` that :func:`reddiff.load_prior` reads. On the CPU a run is deterministic for a given seed.

The rooms: :mod:`.config` (settings, checked before anything is written), :mod:`.checkpoint` (what is kept on
disk, also when a run is interrupted), :mod:`.estimate` (the time estimate said early in a long run) and
:mod:`.loop` (setup, one step, the driver).
"""

from .checkpoint import CHECKPOINT, EXPORT, TrainState, export_prior, plot_loss_curve, read_checkpoint, save_checkpoint
from .config import (
    ARCHITECTURES,
    DEFAULT_MODEL,
    DEFAULT_UNET2D,
    OBJECTIVES,
    TrainConfig,
    build_network,
    draw_timesteps,
    learning_rate,
    resolve_device,
)
from .loop import noisy_batch, setup, train, train_step

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_UNET2D",
    "OBJECTIVES",
    "build_network",
    "noisy_batch",
    "CHECKPOINT",
    "DEFAULT_MODEL",
    "EXPORT",
    "TrainConfig",
    "TrainState",
    "draw_timesteps",
    "export_prior",
    "learning_rate",
    "plot_loss_curve",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "setup",
    "train",
    "train_step",
]
