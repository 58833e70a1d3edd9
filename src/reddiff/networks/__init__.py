"""Denoising networks and their checkpoints: the guided-diffusion ADM UNet, named priors, download and loading."""

from __future__ import annotations

from .adm import ADMUNet, create_model, infer_config
from .checkpoints import NAMED_PRIORS, NamedPrior, build_network, load_network, resolve_checkpoint, save_network

__all__ = [
    "ADMUNet",
    "NAMED_PRIORS",
    "NamedPrior",
    "build_network",
    "create_model",
    "infer_config",
    "load_network",
    "resolve_checkpoint",
    "save_network",
]
