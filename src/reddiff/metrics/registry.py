"""Which metrics exist, which weight files each needs, and whether they are here.

Per-image metrics compare an estimate with its reference (PSNR, SSIM, LPIPS); set metrics compare the estimates of
a whole set with the references (FID, KID). PSNR and SSIM need nothing; the perceptual ones need published weights
(see :mod:`reddiff.metrics.weights`). A missing file makes its metric unavailable with one message, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CheckpointError
from .weights import METRIC_WEIGHTS, candidates, find_weights, metrics_dir

__all__ = ["METRICS", "Metric", "available_metrics", "metric_status", "require", "unavailable_reason"]


@dataclass(frozen=True)
class Metric:
    """One metric.

    Attributes:
        name: as given to ``--metrics``.
        kind: ``"image"`` (one value per image pair) or ``"set"`` (one value per pair of image sets).
        better: ``"higher"`` or ``"lower"``.
        weights: the :data:`~reddiff.metrics.weights.METRIC_WEIGHTS` it needs.
        description: one line.
    """

    name: str
    kind: str
    better: str
    weights: tuple[str, ...]
    description: str


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("psnr", "image", "higher", (), "peak signal-to-noise ratio in dB of the estimate as saved (8 bits)"),
    Metric("ssim", "image", "higher", (), "structural similarity (Gaussian window, 11 taps), as scikit-image"),
    Metric("lpips", "image", "lower", ("alexnet", "lpips-alex"), "LPIPS v0.1 on AlexNet (Zhang et al. 2018)"),
    Metric("lpips-vgg", "image", "lower", ("vgg16", "lpips-vgg"), "LPIPS v0.1 on VGG-16"),
    Metric("fid", "set", "lower", ("inception-fid",), "Frechet Inception distance (pytorch-fid's Inception-v3)"),
    Metric("kid", "set", "lower", ("inception-fid",), "kernel Inception distance x 10^3 (mean and std over subsets)"),
)}


def unavailable_reason(metric: str) -> str | None:
    """Why ``metric`` cannot be computed here (its missing weight files and how to get them), or None."""
    missing = [w for w in METRICS[metric].weights if find_weights(w) is None]
    if not missing:
        return None
    files = ", ".join(METRIC_WEIGHTS[w].filename for w in missing)
    return (f"{metric} needs {files}, not found in {metrics_dir()} or PyTorch's hub cache; pass --download-weights "
            f"(or put the file{'s' if len(missing) > 1 else ''} in {metrics_dir()})")


def require(metric: str, weights: tuple[str, ...]) -> None:
    """Raise :class:`CheckpointError` with :func:`unavailable_reason`'s message when a weight file is missing."""
    missing = [w for w in weights if find_weights(w) is None]
    if missing:
        reason = unavailable_reason(metric) if metric in METRICS else None
        raise CheckpointError(reason or f"{metric} needs {', '.join(METRIC_WEIGHTS[w].filename for w in missing)}")


def metric_status(name: str) -> dict[str, object]:
    """One metric's description and, per weight file, where it was found (or where it was looked for)."""
    m = METRICS[name]
    files = []
    for w in m.weights:
        path = find_weights(w)
        files.append({"name": w, "file": METRIC_WEIGHTS[w].filename, "url": METRIC_WEIGHTS[w].url,
                      "found": str(path) if path else None,
                      "looked_in": sorted({str(p.parent) for p in candidates(METRIC_WEIGHTS[w])})})
    return {"name": name, "kind": m.kind, "better": m.better, "description": m.description,
            "available": unavailable_reason(name) is None, "weights": files}


def available_metrics() -> list[str]:
    """The names of the metrics that can be computed here."""
    return [n for n in METRICS if unavailable_reason(n) is None]
