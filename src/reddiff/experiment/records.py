"""What a run leaves on disk: the output folder (checked before any work, removed again if a failed run leaves it
empty), per-image locks, the settings fingerprint that resuming compares, and each image's files with its
``run.json`` written last (its presence marks a finished image)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from ..errors import ReddiffError
from ..io import heat_map, json_safe, make_grid, save_image, write_json
from ..operators.inpainting import Inpainting
from ..runtime import runtime_of
from .jobs import Outcome

__all__ = ["ESTIMATE", "MEASUREMENT", "GRID", "RUN_JSON", "MASK", "OutputDir", "ImageLocks", "settings_fingerprint",
           "read_record", "write_outputs", "mask_image"]

#: Output file names inside ``DIR/<image name>/``.
ESTIMATE, MEASUREMENT, GRID, RUN_JSON, MASK = "estimate.png", "measurement.png", "grid.png", "run.json", "mask.png"
#: With several samples: ``samples/sample_00.png``, ... and the pixel-wise spread as a heat map.
SAMPLES, SPREAD = "samples", "spread.png"
#: Samples shown in the grid (all are written).
GRID_SAMPLES = 4


def _one_line(exc: OSError) -> str:
    return exc.strerror or str(exc).splitlines()[0]


class OutputDir:
    """An output folder checked before any work: not a file, creatable and writable. A run that fails leaves no
    folder it created behind (when nothing was written into it).

    Args:
        path: the folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._created: list[Path] = []

    def __enter__(self) -> Path:
        if self.path.exists() and not self.path.is_dir():
            raise ReddiffError(f"output path {self.path} is a file; give a folder")
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._created = list(missing)
            fd, probe = tempfile.mkstemp(prefix=".reddiff-probe-", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            self._remove_created()
            raise ReddiffError(f"cannot write to output folder {self.path}: {_one_line(exc)}") from None
        return self.path

    def _remove_created(self) -> None:
        for p in self._created:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._remove_created()


class ImageLocks:
    """Exclusive locks on the images a process writes into an output folder, so that two runs never write the same
    image: a second run refuses at once with one line. The lock files (``.NAME.lock``) are removed on release.

    Args:
        folder: the output folder.
        names: the images this process will write.
    """

    def __init__(self, folder: Path, names: list[str]) -> None:
        self.folder = folder
        self.names = names
        self._held: list[tuple[Path, Any]] = []

    def __enter__(self) -> ImageLocks:
        for name in self.names:
            path = self.folder / f".{name}.lock"
            handle = open(path, "a+")  # noqa: SIM115 - held until release
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                self.release()
                raise ReddiffError(f"{self.folder / name} is being written by another reddiff run; wait for it to "
                                   "finish or choose another --output") from None
            self._held.append((path, handle))
        return self

    def release(self) -> None:
        """Unlock and remove every lock file held."""
        for path, handle in self._held:
            path.unlink(missing_ok=True)
            handle.close()
        self._held = []

    def __exit__(self, *exc: Any) -> None:
        self.release()


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 of the settings (canonical JSON): equal fingerprints mean an earlier result can be reused."""
    return hashlib.sha256(json.dumps(json_safe(settings), sort_keys=True).encode()).hexdigest()


def read_record(path: Path) -> dict[str, Any]:
    """An existing ``run.json`` (empty when unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mask_image(operator: Any) -> torch.Tensor | None:
    """An inpainting operator's mask as an image in [-1, 1] (white = observed), else None."""
    if isinstance(operator, Inpainting):
        return operator.mask.float()[None, None] * 2 - 1
    return None


def write_outputs(
    outcome: Outcome,
    folder: Path,
    *,
    solver: Any,
    prior: Any,
    noise: Any,
    preset: dict[str, Any] | None,
    base_seed: int,
    sigma_y_pixel: float,
    device: str,
    label: str,
    extra_outputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write one image's estimate, measurement, mask (inpainting), grid and ``run.json`` (last) into
    ``folder/<name>/``, and return its summary record (metrics, seconds, output paths).

    Args:
        outcome: the finished job.
        folder: the output folder.
        solver: the solver (its fields are recorded).
        prior: the prior (its provenance and runtime are recorded).
        noise: the noise model.
        preset: the preset the solver's settings came from.
        base_seed: the base seed the image's seeds were derived from.
        sigma_y_pixel: the noise level in 0..1 pixel units, as given.
        device: the device it ran on.
        label: the solver's display name for the grid.
        extra_outputs: files already written for this image (e.g. ``trajectory``), recorded with the others.
    """
    from .. import __version__

    job, op = outcome.job, outcome.job.operator
    d = folder / job.name
    est = outcome.estimate.clamp(-1, 1)
    meas_img = op.y_to_image(job.y.cpu()).clamp(-1, 1)
    outputs = {"estimate": str(save_image(est, d / ESTIMATE)),
               "measurement": str(save_image(meas_img, d / MEASUREMENT)), **(extra_outputs or {})}
    mask = mask_image(op)
    if mask is not None:
        outputs["mask"] = str(save_image(mask, d / MASK))
    tiles, labels = [meas_img, est], ["measurement", label]
    spread = outcome.spread
    if outcome.samples is not None and spread is not None:
        samples = outcome.samples.clamp(-1, 1)
        outputs["samples"] = [str(save_image(smp[None], d / SAMPLES / f"sample_{k:02d}.png"))
                              for k, smp in enumerate(samples)]
        outputs["spread"] = str(save_image(heat_map(spread), d / SPREAD))
        shown = min(GRID_SAMPLES, len(samples))
        tiles = [meas_img, *[smp[None] for smp in samples[:shown]], est, heat_map(spread)]
        labels = ["measurement", *[f"sample {k + 1}" for k in range(shown)], f"mean of {len(samples)}",
                  f"spread <= {float(spread.max()) / 2:.3f}"]
    if job.clean is not None:
        tiles.append(job.clean.cpu())
        labels.append("ground truth")
    outputs["grid"] = str(save_image(make_grid(tiles, labels), d / GRID))
    metrics: dict[str, Any] = {**outcome.scores.to_dict()}
    if job.clean is not None and outcome.psnr_pinv is not None:
        metrics["psnr_pinv"] = outcome.psnr_pinv
    if outcome.samples is not None and spread is not None:
        # the spread in 0..1 pixel units, as a person reads it (the images' [-1, 1] units halved)
        metrics["samples"] = {"count": len(outcome.samples), "spread_mean": float(spread.mean()) / 2,
                              "spread_max": float(spread.max()) / 2}
        if outcome.sample_scores:
            metrics["samples"]["psnr"] = [sc.psnr for sc in outcome.sample_scores]
            metrics["samples"]["ssim"] = [sc.ssim for sc in outcome.sample_scores]
    record: dict[str, Any] = {**metrics, "name": job.name, "input": str(job.source),
                              "seconds": round(outcome.seconds, 4), "network_evals": outcome.network_evals}
    outputs["run"] = str(d / RUN_JSON)
    record["outputs"] = outputs
    run = {
        "reddiff_version": __version__,
        "command": ["reddiff", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("reddiff") else None,
        "input": {"path": str(job.source), "sha256": job.settings.get("input_sha256"),
                  "kind": job.settings.get("kind")},
        "prior": {**prior.info, **prior.describe()},
        "task": {"task": op.task, "params": op.params(), "x_shape": list(op.x_shape), "y_shape": list(op.y_shape)},
        "sigma_y": {"pixel_0_1": sigma_y_pixel, "internal_-1_1": noise.sigma_y},
        "noise": noise.params(),
        "solver": solver.to_dict(),
        "preset": preset or None,
        "seeds": {"base": base_seed, **job.seeds.to_dict()},
        "device": device,
        "runtime": runtime_of(prior).to_dict(),
        "timings": {"solve_seconds": round(outcome.seconds, 4)},
        "network_evals": outcome.network_evals,
        "notes": outcome.notes,
        "metrics": metrics,
        "outputs": outputs,
        "settings": job.settings,
        "settings_sha256": settings_fingerprint(job.settings),
        "record": record,
    }
    write_json(run, d / RUN_JSON)  # last: its presence marks a finished image
    return record
