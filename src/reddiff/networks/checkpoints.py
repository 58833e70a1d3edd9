"""Named pretrained priors, the download cache, and safe checkpoint loading.

Checkpoints are read with ``torch.load(..., weights_only=True)`` (or safetensors) only: no pickled code is ever
executed. Every failure a user can fix (unknown name, missing or truncated file, failed download, architecture
mismatch) raises a :class:`~reddiff.errors.CheckpointError` with a one-line message.

Environment:
    ``REDDIFF_CACHE``: cache directory for downloaded checkpoints (else ``$XDG_CACHE_HOME/reddiff``, else
    ``~/.cache/reddiff``).
    ``REDDIFF_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: never download; named priors must already be cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import CheckpointError, ReddiffError
from .adm import ADMUNet, create_model, infer_config

__all__ = [
    "NAMED_PRIORS",
    "NamedPrior",
    "build_network",
    "cache_dir",
    "download",
    "file_sha256",
    "load_network",
    "load_state_dict_file",
    "resolve_checkpoint",
    "save_network",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class NamedPrior:
    """A published pretrained ε-prediction network that can be referred to by name.

    Attributes:
        name: the short name used on the command line (``--prior NAME``).
        description: one line: what it was trained on and who released it.
        filename: the file name in the cache directory.
        urls: direct download URLs, tried in order (empty: manual download only).
        config: guided-diffusion ``create_model`` arguments of the network.
        size: file size in bytes, verified when known.
        sha256: hex digest of the file, verified when known.
        source: the page where the checkpoint is published (for manual downloads).
    """

    name: str
    description: str
    filename: str
    urls: tuple[str, ...]
    config: dict[str, Any] = field(hash=False)
    size: int | None = None
    sha256: str | None = None
    source: str = ""


_ADM256_COMMON: dict[str, Any] = {
    "image_size": 256,
    "channel_mult": "",
    "learn_sigma": True,
    "class_cond": False,
    "num_heads": 4,
    "num_head_channels": 64,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "dropout": 0.0,
    "resblock_updown": True,
    "use_fp16": False,
    "use_new_attention_order": False,
}

#: The named priors. Sizes and digests are not recorded (unknown to us); a downloaded file is instead checked to be a
#: complete torch checkpoint whose keys and shapes match the recorded architecture.
NAMED_PRIORS: dict[str, NamedPrior] = {
    p.name: p
    for p in (
        NamedPrior(
            name="imagenet256-uncond",
            description="ImageNet 256x256 unconditional ADM (openai guided-diffusion, July 2021), 552.8M parameters",
            filename="256x256_diffusion_uncond.pt",
            urls=("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",),
            config={**_ADM256_COMMON, "num_channels": 256, "num_res_blocks": 2, "attention_resolutions": "32,16,8"},
            source="https://github.com/openai/guided-diffusion",
        ),
        NamedPrior(
            name="ffhq256",
            description="FFHQ 256x256 unconditional ADM ffhq_10m.pt (released with DPS, Chung et al. 2023), 93.6M "
            "parameters",
            filename="ffhq_10m.pt",
            # Published only as a Google Drive folder, which cannot be fetched with a plain HTTP request.
            urls=(),
            config={**_ADM256_COMMON, "num_channels": 128, "num_res_blocks": 1, "attention_resolutions": "16"},
            source="https://drive.google.com/drive/folders/1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh "
            "(linked from https://github.com/DPS2022/diffusion-posterior-sampling)",
        ),
    )
}


# ----------------------------------------------------------------------------------------------------------------------
# Cache and download
# ----------------------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The directory downloaded checkpoints are kept in.

    Returns:
        ``$REDDIFF_CACHE`` if set, else ``$XDG_CACHE_HOME/reddiff``, else ``~/.cache/reddiff`` (not created here).
    """
    if os.environ.get("REDDIFF_CACHE"):
        return Path(os.environ["REDDIFF_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "reddiff"
    return Path.home() / ".cache" / "reddiff"


_default_cache_dir = cache_dir  # resolve_checkpoint's ``cache_dir`` argument shadows the function


def _offline_variable() -> str | None:
    for var in ("REDDIFF_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in chunks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying size and digest when given.

    The data is streamed into a temporary file beside ``dest`` and moved into place only after every check passed,
    so ``dest`` is either absent or complete.

    Args:
        url: the URL (http, https or file).
        dest: the final path; its directory is created.
        size: expected size in bytes, or None.
        sha256: expected hex SHA-256, or None.
        progress: show a tqdm progress bar on stderr.
        verify: extra check called on the complete temporary file; it raises :class:`CheckpointError` to reject it.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError: downloads are disabled (``REDDIFF_OFFLINE``/``HF_HUB_OFFLINE``), the transfer failed, or a
            check failed. No file is left behind.
    """
    dest = Path(dest)
    var = _offline_variable()
    if var is not None:
        raise CheckpointError(
            f"downloads are disabled ({var} is set): cannot fetch {url}; download it yourself and pass the local path"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write to {dest.parent}: {_one_line(e)}") from e
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as f:
            request = urllib.request.Request(url, headers={"User-Agent": "reddiff"})
            with urllib.request.urlopen(request, timeout=60) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else size
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    file=sys.stderr,
                    disable=not progress,
                    leave=False,
                ) as bar:
                    while chunk := response.read(_CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        if length and length.isdigit() and received != int(length):
            raise CheckpointError(f"download of {url} failed: got {received} of {length} bytes")
        if size is not None and received != size:
            raise CheckpointError(f"download of {url} failed: got {received} bytes, expected {size}")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise CheckpointError(f"download of {url} failed: sha256 {digest.hexdigest()} does not match {sha256}")
        if verify is not None:
            verify(tmp)
        os.replace(tmp, dest)
    except CheckpointError:
        tmp.unlink(missing_ok=True)
        raise
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = e.reason if isinstance(e, urllib.error.URLError) else _one_line(e)
        raise CheckpointError(f"download of {url} failed: {reason}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _manual_hint(prior: NamedPrior) -> str:
    where = prior.source or ", ".join(prior.urls) or "its publisher"
    return f"download {prior.filename} manually from {where} and pass its path instead of the name"


def _architecture_check(prior: NamedPrior) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        state_dict = load_state_dict_file(path, display_name=prior.filename)
        _check_keys(state_dict, prior.config)

    return check


#: Name of the prior shipped inside the package (trained by ``reddiff train``; see docs/MODEL_CARD.md).
BUNDLED = "bundled"


def bundled_weights() -> Path:
    """Path of the bundled prior's weights (package data; a ``.json`` config and ``.presets.json`` beside it)."""
    return Path(__file__).resolve().parents[1] / "weights" / "bundled.safetensors"


def resolve_checkpoint(
    spec: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[Path, NamedPrior | None]:
    """Turn a prior name or a file path into a local checkpoint file.

    Args:
        spec: a key of :data:`NAMED_PRIORS` (downloaded into the cache on first use) or a path to a checkpoint.
        cache_dir: the cache directory (default: :func:`cache_dir`).
        progress: show a download progress bar.

    Returns:
        ``(path, prior)``, ``prior`` being None for a plain path.

    Raises:
        CheckpointError: an unknown name / missing file, or every download of a named prior failed.
    """
    text = os.fspath(spec)
    if text == BUNDLED:
        path = bundled_weights()
        if not path.is_file():
            raise CheckpointError(f"the bundled prior is missing from this installation ({path}); reinstall reddiff "
                                  "or pass --prior PATH")
        return path, None
    prior = NAMED_PRIORS.get(text)
    if prior is None:
        path = Path(text).expanduser()
        if path.is_file():
            return path, None
        if path.exists():
            raise CheckpointError(f"checkpoint {text} is not a file")
        raise CheckpointError(
            f"no checkpoint file {text!r} and no prior of that name; "
            f"known priors: {', '.join([BUNDLED, *NAMED_PRIORS])}"
        )
    directory = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    dest = directory / prior.filename
    if dest.is_file():
        if prior.size is not None and dest.stat().st_size != prior.size:
            raise CheckpointError(
                f"cached {dest} has {dest.stat().st_size} bytes, expected {prior.size}; delete it to download again"
            )
        return dest, prior
    if not prior.urls:
        raise CheckpointError(f"prior {prior.name!r} cannot be downloaded automatically: {_manual_hint(prior)}")
    var = _offline_variable()
    if var is not None:
        raise CheckpointError(
            f"prior {prior.name!r} is not in the cache {directory} and downloads are disabled ({var} is set); "
            f"{_manual_hint(prior)}"
        )
    errors = []
    verify = None if prior.sha256 is not None else _architecture_check(prior)
    for url in prior.urls:
        try:
            return download(url, dest, size=prior.size, sha256=prior.sha256, progress=progress, verify=verify), prior
        except CheckpointError as e:
            errors.append(str(e))
    raise CheckpointError(f"could not download prior {prior.name!r} ({'; '.join(errors)}); {_manual_hint(prior)}")


# ----------------------------------------------------------------------------------------------------------------------
# Loading and building
# ----------------------------------------------------------------------------------------------------------------------

_WRAPPER_KEYS = ("state_dict", "model", "ema", "model_state_dict", "ema_model")


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


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
        CheckpointError: the file is missing, truncated, corrupt, or holds no (unambiguous) state dict.
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
        raise CheckpointError(f"cannot read checkpoint {name} (truncated or not a checkpoint?): {_one_line(e)}") from e
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
        raise CheckpointError(f"cannot read network config {os.fspath(config)}: {_one_line(e)}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"network config {os.fspath(config)} is not a JSON object of create_model arguments")
    return data


def _mismatch(state_dict: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
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


def _meta_model(config: Mapping[str, Any]) -> ADMUNet:
    with torch.device("meta"):
        return create_model(**config)


def _check_keys(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> ADMUNet:
    net = _meta_model(config)
    problem = _mismatch(state_dict, net.state_dict())
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
    net = _check_keys(state_dict, cfg)
    if share:  # the network takes the checkpoint's tensors themselves (no second copy in memory)
        net.load_state_dict(state_dict, strict=True, assign=True)
    else:
        net.to_empty(device="cpu")
        net.load_state_dict(state_dict, strict=True)
    net.float()
    if cfg.get("use_fp16"):
        net.convert_to_fp16()
    return net


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
        spec: a name in :data:`NAMED_PRIORS` or a checkpoint path (``.pt`` or ``.safetensors``).
        config: ``create_model`` arguments (dict or JSON path), or None.
        cache_dir: the download cache (default :func:`cache_dir`).
        progress: show a download progress bar.

    Returns:
        ``(network, info)``: the network in eval mode with gradients disabled on its parameters, and
        ``{"name", "path", "sha256", "config", "learned_sigma"}`` describing what was loaded.

    Raises:
        CheckpointError: see :func:`resolve_checkpoint`, :func:`load_state_dict_file` and :func:`build_network`;
            also when a named prior's recorded digest does not match the cached file.
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
