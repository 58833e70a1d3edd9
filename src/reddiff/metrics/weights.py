"""Where the perceptual metrics' published weights come from: known files, where they are looked for, and a
verified download on request (never automatic).

A weight file is looked for, in order, in

1. ``$REDDIFF_METRICS_DIR`` if set, else ``<reddiff cache>/metrics`` (see :func:`reddiff.networks.hub.cache_dir`),
   where :func:`fetch_weights` puts downloads;
2. PyTorch's hub cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``), where
   torchvision and pytorch-fid keep the same files under the same names;
3. for the LPIPS linear layers, the ``lpips`` package's own ``weights/v0.1`` folder when it is installed (found
   without importing it).

Every file is read with ``torch.load(weights_only=True)``: no pickled code is executed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from ..errors import CheckpointError

__all__ = ["METRIC_WEIGHTS", "MetricWeights", "fetch_weights", "find_weights", "load_into", "metrics_dir"]


@dataclass(frozen=True)
class MetricWeights:
    """One published weight file a metric needs.

    Attributes:
        name: short name (``alexnet``, ``vgg16``, ``lpips-alex``, ``lpips-vgg``, ``inception-fid``).
        filename: the file's published name (the same in every cache).
        url: where it is published.
        sha256: the full hex digest when known, else None.
        sha256_prefix: the digest prefix the file name carries (PyTorch hub's convention), else None.
        description: what it is and who published it.
        aliases: other published names of an equivalent file, looked for too.
        package_path: ``(package, relative path)`` of a copy inside an installed package, or None.
    """

    name: str
    filename: str
    url: str
    sha256: str | None
    sha256_prefix: str | None
    description: str
    aliases: tuple[str, ...] = ()
    package_path: tuple[str, str] | None = None


METRIC_WEIGHTS: dict[str, MetricWeights] = {w.name: w for w in (
    MetricWeights("alexnet", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                  None, "7be5be79", "torchvision's ImageNet AlexNet (IMAGENET1K_V1), LPIPS-Alex's backbone",
                  aliases=("alexnet-owt-4df8aa71.pth",)),
    MetricWeights("vgg16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                  None, "397923af", "torchvision's ImageNet VGG-16 (IMAGENET1K_V1), LPIPS-VGG's backbone"),
    MetricWeights("lpips-alex", "lpips-v0.1-alex.pth",
                  "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
                  "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", None,
                  "LPIPS v0.1 linear layers on AlexNet (Zhang et al. 2018, BSD-2-Clause)",
                  package_path=("lpips", "weights/v0.1/alex.pth")),
    MetricWeights("lpips-vgg", "lpips-v0.1-vgg.pth",
                  "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
                  "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", None,
                  "LPIPS v0.1 linear layers on VGG-16 (Zhang et al. 2018, BSD-2-Clause)",
                  package_path=("lpips", "weights/v0.1/vgg.pth")),
    MetricWeights("inception-fid", "pt_inception-2015-12-05-6726825d.pth",
                  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                  "pt_inception-2015-12-05-6726825d.pth", None, "6726825d",
                  "TensorFlow's 2015-12-05 Inception-v3 of the FID reference, ported by pytorch-fid (Apache-2.0)"),
)}


def metrics_dir() -> Path:
    """Where downloaded metric weights go: ``$REDDIFF_METRICS_DIR``, else ``<reddiff cache>/metrics``."""
    if os.environ.get("REDDIFF_METRICS_DIR"):
        return Path(os.environ["REDDIFF_METRICS_DIR"]).expanduser()
    from ..networks.hub import cache_dir

    return cache_dir() / "metrics"


def _torch_hub_dir() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def _package_copy(weights: MetricWeights) -> Path | None:
    if weights.package_path is None:
        return None
    package, rel = weights.package_path
    try:
        spec = importlib.util.find_spec(package)  # locates the package without running it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        if (Path(root) / rel).is_file():
            return Path(root) / rel
    return None


def candidates(weights: MetricWeights) -> list[Path]:
    """Every place :func:`find_weights` looks, in order."""
    names = (weights.filename, *weights.aliases)
    paths = [d / n for d in (metrics_dir(), _torch_hub_dir()) for n in names]
    copy = _package_copy(weights)
    return paths + ([copy] if copy is not None else [])


def find_weights(name: str) -> Path | None:
    """The local file of the metric weights ``name`` (a key of :data:`METRIC_WEIGHTS`), or None when absent."""
    return next((p for p in candidates(METRIC_WEIGHTS[name]) if p.is_file()), None)


def _digest_check(weights: MetricWeights) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        from ..networks.loading import file_sha256

        digest = file_sha256(path)
        if weights.sha256_prefix is not None and not digest.startswith(weights.sha256_prefix):
            raise CheckpointError(f"{weights.filename} has sha256 {digest[:12]}..., but its name says "
                                  f"{weights.sha256_prefix}...; the download is not the published file")

    return check


def fetch_weights(name: str, *, progress: bool = True, weights: MetricWeights | None = None) -> Path:
    """The local file of the metric weights ``name``, downloading it into :func:`metrics_dir` when absent.

    The download is atomic and verified (its full SHA-256 where known, else the digest prefix in its name), so the
    cache holds either the complete published file or nothing.

    Args:
        name: a key of :data:`METRIC_WEIGHTS`.
        progress: show a progress bar.
        weights: the entry to use instead of ``METRIC_WEIGHTS[name]`` (another mirror, for instance).

    Raises:
        CheckpointError: unknown name, downloads disabled, the transfer failed or the file is not the published one.
    """
    from ..networks.hub import download

    if weights is None:
        if name not in METRIC_WEIGHTS:
            raise CheckpointError(f"unknown metric weights {name!r}; known: {', '.join(METRIC_WEIGHTS)}")
        weights = METRIC_WEIGHTS[name]
    found = next((p for p in candidates(weights) if p.is_file()), None)
    if found is not None:
        return found
    return download(weights.url, metrics_dir() / weights.filename, sha256=weights.sha256, progress=progress,
                    verify=_digest_check(weights))


def load_into(module: nn.Module, path: Path, what: str, *, prefix: str = "") -> None:
    """Load the state dict in ``path`` (``weights_only``) into ``module`` after checking its keys and shapes.

    ``num_batches_tracked`` counters may be present or absent (checkpoints saved by older PyTorch lack them).

    Args:
        module: the network (its parameters may be on the ``meta`` device; they are replaced).
        path: the weight file.
        what: the name used in error messages.
        prefix: keep only the checkpoint's keys under this prefix (stripped), e.g. ``"features."``.

    Raises:
        CheckpointError: unreadable file, or keys/shapes that differ from the module's.
    """
    from ..networks.loading import load_state_dict_file, state_dict_mismatch

    state: dict[str, Tensor] = load_state_dict_file(path, display_name=f"{what} ({path})")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    expected = module.state_dict()
    counters = {k for k in expected if k.endswith("num_batches_tracked")}
    problem = state_dict_mismatch({k: v for k, v in state.items() if k not in counters},
                                  {k: v for k, v in expected.items() if k not in counters})
    if problem:
        raise CheckpointError(f"{path} is not {what}: {problem}")
    module.load_state_dict(state, strict=False, assign=True)
    for k in counters - set(state):
        # the counter only matters for training; give it a real tensor so the module leaves the meta device
        owner = module.get_submodule(k.rsplit(".", 1)[0])
        owner.num_batches_tracked = owner.num_batches_tracked.new_zeros((), device="cpu")  # type: ignore[operator]
