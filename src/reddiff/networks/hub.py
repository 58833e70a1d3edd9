"""Where checkpoints come from: the named pretrained priors, the download cache, and atomic verified downloads.

Reading and building a network from a resolved file is :mod:`reddiff.networks.loading`'s job. Every failure a user
can fix (unknown name, missing file, failed download) raises a :class:`~reddiff.errors.CheckpointError` with a
one-line message.

Environment:
    ``REDDIFF_CACHE``: cache directory for downloaded checkpoints (else ``$XDG_CACHE_HOME/reddiff``, else
    ``~/.cache/reddiff``).
    ``REDDIFF_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: never download; named priors must already be cached.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import CheckpointError

__all__ = [
    "BUNDLED",
    "NAMED_PRIORS",
    "NamedPrior",
    "bundled_weights",
    "cache_dir",
    "download",
    "resolve_checkpoint",
]

#: Bytes read or written at a time when streaming a checkpoint (download, digest).
CHUNK = 1 << 20


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

#: Name of the prior shipped inside the package (trained by ``reddiff train``; see docs/MODEL_CARD.md).
BUNDLED = "bundled"


def bundled_weights() -> Path:
    """Path of the bundled prior's weights (package data; a ``.json`` config and ``.presets.json`` beside it)."""
    return Path(__file__).resolve().parents[1] / "weights" / "bundled.safetensors"


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


def one_line(reason: object) -> str:
    """The first line of an exception's (or other reason's) text, at most 200 characters, for a one-line error.

    Args:
        reason: an exception, or a reason object such as :attr:`urllib.error.URLError.reason`.

    Returns:
        The text's first non-blank line, shortened with ``...``; the type's name when the text is empty.
    """
    lines = str(reason).strip().splitlines()
    msg = lines[0] if lines else type(reason).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."


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
        raise CheckpointError(f"cannot write to {dest.parent}: {one_line(e)}") from e
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
                    while chunk := response.read(CHUNK):
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
        reason = one_line(e.reason if isinstance(e, urllib.error.URLError) else e)
        raise CheckpointError(f"download of {url} failed: {reason}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


# ----------------------------------------------------------------------------------------------------------------------
# Names and paths to local files
# ----------------------------------------------------------------------------------------------------------------------


def _manual_hint(prior: NamedPrior) -> str:
    where = prior.source or ", ".join(prior.urls) or "its publisher"
    return f"download {prior.filename} manually from {where} and pass its path instead of the name"


def _architecture_check(prior: NamedPrior) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        # Imported here: loading imports this module (load_network resolves names with resolve_checkpoint).
        from .loading import check_architecture, load_state_dict_file

        check_architecture(load_state_dict_file(path, display_name=prior.filename), prior.config)

    return check


def resolve_checkpoint(
    spec: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[Path, NamedPrior | None]:
    """Turn a prior name or a file path into a local checkpoint file.

    Args:
        spec: :data:`BUNDLED`, a key of :data:`NAMED_PRIORS` (downloaded into the cache on first use) or a path to a
            checkpoint.
        cache_dir: the cache directory (default: :func:`cache_dir`).
        progress: show a download progress bar.

    Returns:
        ``(path, prior)``, ``prior`` being None for a plain path or the bundled prior.

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
