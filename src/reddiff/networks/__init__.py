"""Denoising networks and their checkpoints: the guided-diffusion ADM UNet, named priors, download and loading."""

from __future__ import annotations

from .adm import ADMUNet, create_model, infer_config
from .hub import BUNDLED, NAMED_PRIORS, NamedPrior, bundled_weights, cache_dir, download, resolve_checkpoint
from .loading import build_network, file_sha256, load_network, load_state_dict_file, save_network

__all__ = [
    "ADMUNet",
    "BUNDLED",
    "NAMED_PRIORS",
    "NamedPrior",
    "build_network",
    "bundled_weights",
    "cache_dir",
    "create_model",
    "download",
    "file_sha256",
    "infer_config",
    "load_network",
    "load_state_dict_file",
    "resolve_checkpoint",
    "save_network",
]
