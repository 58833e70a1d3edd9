"""Safe checkpoint reading, building a network checked against its architecture, loading and saving.

Checkpoints are read with ``torch.load(..., weights_only=True)`` (or safetensors) only: no pickled code is ever
executed. Where a checkpoint comes from (a name, the cache, a download) is :mod:`reddiff.networks.hub`'s job. Every
failure a user can fix (missing, truncated or pickled-code file, architecture mismatch, unreadable config) raises a
:class:`~reddiff.errors.CheckpointError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, ReddiffError
from .adm import ADMUNet, create_model, infer_config
from .hub import BUNDLED, CHUNK, one_line, resolve_checkpoint

__all__ = [
    "build_network",
    "file_sha256",
    "load_network",
    "load_state_dict_file",
    "save_network",
    "state_dict_mismatch",
]

_WRAPPER_KEYS = ("state_dict", "model", "ema", "model_state_dict", "ema_model")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in chunks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _refuses_pickled_code(exc: Exception) -> bool:
    """Whether ``torch.load(weights_only=True)`` failed because the file holds objects other than weights."""
    return isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc)


def load_state_dict_file(path: str | os.PathLike[str], *, display_name: str | None = None) -> dict[str, Tensor]:
    """Read a state dict safely (``torch.load(weights_only=True)`` or safetensors) onto the CPU.

    A dict holding the state dict under exactly one of the keys ``state_dict``, ``model``, ``ema``,
    ``model_state_dict``, ``ema_model`` is unwrapped, and a ``module.`` prefix shared by every key is removed.

    Args:
        path: a ``.pt``/``.pth``/``.ckpt`` torch file or a ``.safetensors`` file.
        display_name: the name used in error messages (default: the path).

    Returns:
        Parameter name -> CPU tensor.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, holds pickled Python objects other than tensors
            (never unpickled), or holds no (unambiguous) state dict.
    """
    path = Path(path)
    name = display_name or str(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {name} does not exist") from e
    except Exception as e:  # torch/zipfile/pickle/safetensors raise many types for a damaged file
        if _refuses_pickled_code(e):
            # PyTorch's own text suggests weights_only=False, which is exactly what must not be done: not chained.
            raise CheckpointError(
                f"checkpoint {name} is not a weights-only checkpoint: it holds pickled Python objects (reddiff never "
                "runs pickled code); save a plain state dict or a .safetensors file"
            ) from None
        detail = one_line(e) if not isinstance(e, KeyError | IndexError) else "not a torch or safetensors file"
        raise CheckpointError(f"cannot read checkpoint {name} (truncated or not a checkpoint?): {detail}") from e
    if not _is_tensor_dict(obj):
        nested = [k for k in _WRAPPER_KEYS if isinstance(obj, Mapping) and _is_tensor_dict(obj.get(k))]
        if len(nested) != 1:
            what = f"keys {', '.join(nested)}" if nested else "no tensor dict"
            raise CheckpointError(f"checkpoint {name} does not hold a single state dict ({what})")
        obj = obj[nested[0]]
    state_dict = dict(obj)
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _read_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    try:
        data = json.loads(Path(config).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read network config {os.fspath(config)}: {one_line(e)}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"network config {os.fspath(config)} is not a JSON object of create_model arguments")
    return data


# ----------------------------------------------------------------------------------------------------------------------
# Building against the architecture
# ----------------------------------------------------------------------------------------------------------------------


def state_dict_mismatch(state_dict: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """What differs between a checkpoint's keys and shapes and a model's, in one line (None when nothing)."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    parts = []
    if missing:
        parts.append(f"missing keys {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch (checkpoint vs model) {few(shapes)}")
    return "; ".join(parts) or None


def check_architecture(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> ADMUNet:
    """Check that a state dict has exactly the keys and shapes of the network ``config`` describes.

    Args:
        state_dict: parameter name -> tensor (or anything with a ``shape``).
        config: guided-diffusion ``create_model`` arguments.

    Returns:
        The network, built on the meta device (no memory, no random initialisation).

    Raises:
        CheckpointError: keys are missing or unexpected, or shapes differ (a few of each are named).
        ReddiffError: the config has unknown keys or describes an impossible network.
    """
    with torch.device("meta"):
        net = create_model(**config)
    problem = state_dict_mismatch(state_dict, net.state_dict())
    if problem:
        raise CheckpointError(
            f"checkpoint does not match the architecture: {problem}; pass the right --prior-config "
            "(a JSON file of guided-diffusion create_model arguments)"
        )
    return net


def build_network(
    state_dict: Mapping[str, Tensor],
    config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
) -> ADMUNet:
    """Build an :class:`ADMUNet` holding ``state_dict`` (strictly: every key and shape must match).

    Args:
        state_dict: guided-diffusion parameter name -> tensor.
        config: ``create_model`` arguments as a dict or a JSON file path; None infers them with
            :func:`~reddiff.networks.adm.infer_config` (see there for what cannot be inferred).

    Returns:
        The network on the CPU (float32, or float16 body with ``use_fp16``), in training mode as built. Its
        parameters are copies: ``state_dict`` is not modified or shared.

    Raises:
        CheckpointError: the state dict does not fit the architecture, or the config file is unreadable.
        ReddiffError: the config has unknown keys or describes an impossible network.
    """
    return _build(state_dict, config, share=False)


def _build(
    state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | str | os.PathLike[str] | None, share: bool
) -> ADMUNet:
    cfg = infer_config(state_dict) if config is None else _read_config(config)
    # Built on the meta device: no random initialisation, which costs seconds for the large models.
    net = check_architecture(state_dict, cfg)
    if share:  # the network takes the checkpoint's tensors themselves (no second copy in memory)
        net.load_state_dict(state_dict, strict=True, assign=True)
    else:
        net.to_empty(device="cpu")
        net.load_state_dict(state_dict, strict=True)
    net.float()
    if cfg.get("use_fp16"):
        net.convert_to_fp16()
    return net


# ----------------------------------------------------------------------------------------------------------------------
# Loading and saving
# ----------------------------------------------------------------------------------------------------------------------


def _sibling_config(path: Path) -> Path | None:
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file() and candidate != path:
            return candidate
    return None


def load_network(
    spec: str | os.PathLike[str],
    config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[ADMUNet, dict[str, Any]]:
    """Resolve, read and build a pretrained network, ready for inference.

    The config is, in order of preference: ``config``; the named prior's recorded config; ``<stem>.json`` or
    ``config.json`` beside the checkpoint file; inferred from the state dict.

    Args:
        spec: ``"bundled"``, a name in :data:`~reddiff.networks.hub.NAMED_PRIORS` or a checkpoint path (``.pt`` or
            ``.safetensors``).
        config: ``create_model`` arguments (dict or JSON path), or None.
        cache_dir: the download cache (default :func:`~reddiff.networks.hub.cache_dir`).
        progress: show a download progress bar.

    Returns:
        ``(network, info)``: the network in eval mode with gradients disabled on its parameters, and
        ``{"name", "path", "sha256", "config", "learned_sigma"}`` describing what was loaded.

    Raises:
        CheckpointError: see :func:`~reddiff.networks.hub.resolve_checkpoint`, :func:`load_state_dict_file` and
            :func:`build_network`; also when a named prior's recorded digest does not match the cached file.
    """
    path, prior = resolve_checkpoint(spec, cache_dir=cache_dir, progress=progress)
    digest = file_sha256(path)
    if prior is not None and prior.sha256 is not None and digest != prior.sha256.lower():
        raise CheckpointError(
            f"cached {path} has sha256 {digest}, expected {prior.sha256}; delete it to download again"
        )
    if config is None:
        if prior is not None:
            config = prior.config
        else:
            config = _sibling_config(path)
    state_dict = load_state_dict_file(path)
    net = _build(state_dict, config, share=True)
    net.eval()
    net.requires_grad_(False)
    info = {
        "name": prior.name if prior is not None else (BUNDLED if os.fspath(spec) == BUNDLED else path.name),
        "path": str(path),
        "sha256": digest,
        "config": dict(net.config),
        "learned_sigma": net.learn_sigma,
    }
    return net, info


def _atomic_write(dest: Path, write: Callable[[Path], None]) -> None:
    from ..io import atomic_path

    with atomic_path(dest) as tmp:
        write(tmp)


def save_network(network: ADMUNet, path: str | os.PathLike[str]) -> Path:
    """Save a network as ``path`` (safetensors) plus its config as ``<stem>.json`` beside it.

    :func:`load_network` reads the pair back. Both files are written atomically.

    Args:
        network: the network.
        path: destination ending in ``.safetensors``.

    Returns:
        The path of the weights file.

    Raises:
        ReddiffError: ``path`` does not end in ``.safetensors``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ReddiffError(f"save_network writes safetensors: {path} must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    config_text = json.dumps(network.config, indent=2, sort_keys=True) + "\n"
    _atomic_write(path.with_suffix(".json"), lambda p: p.write_text(config_text))
    _atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt", "library": "reddiff"}))
    return path
