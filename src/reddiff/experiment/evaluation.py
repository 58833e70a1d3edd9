"""The evaluation protocol of the papers: a folder of clean images, each centre-cropped and resized to one size, one
simulated measurement per image (its own seeds, the same for every solver), every solver on it, and a table of
per-image metrics (mean and standard error) and set metrics (FID, KID) against the references.

:func:`evaluate` does it all in one call; :func:`run_images` (the per-image work, resumable, any share of the images)
and :func:`summarize` (metrics from the written files) are its two halves, which ``reddiff evaluate`` runs on
``torchrun`` ranks.

What is written (``OUT/``):

- ``references/<name>.png``: the prepared clean image; ``measurements/<name>.png``: what the solvers saw;
- ``<solver>/<name>.png``: each estimate, and ``<solver>/<name>.json``, written last, which marks it finished and
  holds the settings fingerprint that resuming compares;
- ``evaluation.json``, ``evaluation.md`` and ``grid.png`` (the first images: measurement, each solver, reference).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ReddiffError
from ..io import list_images, load_image, make_grid, save_image, write_json
from ..noise import NoiseModel
from .jobs import Job, solve_jobs
from .measure import Seeds, as_noise, score, simulate
from .records import read_record, settings_fingerprint

__all__ = ["PROTOCOLS", "Protocol", "centre_crop_resize", "evaluate", "load_dataset", "mean_and_se", "run_images",
           "summarize", "usable_solvers", "resolve_protocol"]

#: Folder names inside the output folder.
REFERENCES, MEASUREMENTS = "references", "measurements"
#: Images shown in the grid.
GRID_IMAGES = 4


@dataclass(frozen=True)
class Protocol:
    """A published evaluation setting.

    Attributes:
        name: as given to ``--protocol``.
        task: the task string.
        sigma_y: measurement noise in 0..1 pixel units (half the [-1, 1] figure papers quote).
        size: image side after the centre crop and resize.
        source: where the setting comes from.
    """

    name: str
    task: str
    sigma_y: float
    size: int
    source: str


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("reddiff-inpaint-freeform", "inpaint-freeform", 0.0, 256,
             "RED-diff (Mardani et al., ICLR 2024) Table 1: ImageNet 256 validation (1k images), free-form masks "
             "with 20-30 % missing; no measurement noise (the official configuration's sigma_y is 0)"),
    Protocol("dps-inpaint-box", "inpaint-box", 0.025, 256,
             "DPS (Chung et al., ICLR 2023): FFHQ/ImageNet 256, a 128x128 box, sigma_y 0.05 in [-1, 1]"),
    Protocol("dps-inpaint-random", "inpaint-random:0.92", 0.025, 256,
             "DPS: FFHQ/ImageNet 256, 92 % of the pixels missing at random, sigma_y 0.05 in [-1, 1]"),
    Protocol("ddrm-sr4", "sr:4", 0.025, 256,
             "DDRM/RED-diff: x4 super-resolution by 4x4 block averaging, with DPS's sigma_y 0.05 in [-1, 1]"),
    Protocol("dps-sr4-bicubic", "bicubic:4", 0.025, 256,
             "DPS: x4 bicubic super-resolution, sigma_y 0.05 in [-1, 1]"),
    Protocol("dps-deblur-gauss", "deblur-gauss", 0.025, 256,
             "DPS: Gaussian blur, 61x61 kernel of std 3.0, sigma_y 0.05 in [-1, 1]"),
    Protocol("dps-deblur-motion", "deblur-motion", 0.025, 256,
             "DPS: motion blur, 61x61 random-trajectory kernel of intensity 0.5, sigma_y 0.05 in [-1, 1]"),
)}


def centre_crop_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """guided-diffusion's rule for a ``size`` x ``size`` image: halve with box filters while the short side is at
    least twice ``size``, resize bicubically so that the short side is ``size``, and crop the centre.

    Args:
        x: ``[1, 3, H, W]`` in [-1, 1] (8-bit values, as read from a file).
        size: the side of the result.

    Returns:
        ``[1, 3, size, size]`` in [-1, 1], rounded to 8 bits as PIL produces it.
    """
    import numpy as np
    from PIL import Image

    from ..io import from_unit, to_uint8

    im = Image.fromarray(to_uint8(x[0]))
    while min(im.size) >= 2 * size:
        im = im.resize(tuple(s // 2 for s in im.size), resample=Image.Resampling.BOX)
    scale = size / min(im.size)
    im = im.resize(tuple(round(s * scale) for s in im.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(im)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    arr = arr[top:top + size, left:left + size]
    return from_unit(torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)).unsqueeze(0)


def load_dataset(data: str | Path, size: int, limit: int | None = None) -> list[tuple[str, torch.Tensor]]:
    """The images of ``data`` (a folder or one file), sorted by name, the first ``limit``, each prepared by
    :func:`centre_crop_resize`.

    Raises:
        ReddiffError: no images, a name used twice, an unreadable file, or an image smaller than ``size``.
    """
    files = list_images(data)
    if limit is not None:
        files = files[:limit]
    seen: set[str] = set()
    out = []
    for f in files:
        if f.stem in seen:
            raise ReddiffError(f"two images in {data} share the name {f.stem!r}; rename one")
        seen.add(f.stem)
        x = load_image(f, channels=3)
        if min(x.shape[-2:]) < size:
            raise ReddiffError(f"{f} is {x.shape[-1]}x{x.shape[-2]}, smaller than the evaluation size {size}; "
                               "give larger images or a smaller --size")
        out.append((f.stem, centre_crop_resize(x, size)))
    return out


def resolve_protocol(protocol: str | None, task: str | None, sigma_y: float | None,
                     size: int | None) -> tuple[str, float, int, Protocol | None]:
    """``(task, sigma_y, size, protocol)`` of an evaluation: those given, else the protocol's (a key of
    :data:`PROTOCOLS`), else no noise and 256 px; and the protocol itself (None without one).

    Raises:
        ReddiffError: an unknown protocol, or neither a task nor a protocol.
    """
    proto = PROTOCOLS.get(protocol) if protocol else None
    if protocol and proto is None:
        raise ReddiffError(f"unknown protocol {protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    task = task or (proto.task if proto else None)
    if task is None:
        raise ReddiffError("give a task (--task) or a protocol (--protocol; see `reddiff evaluate --help`)")
    sigma = sigma_y if sigma_y is not None else (proto.sigma_y if proto else 0.0)
    return task, float(sigma), int(size or (proto.size if proto else 256)), proto


def usable_solvers(solvers: dict[str, Any], task: str, size: int,
                   prior: Any = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Split the solvers into those that can use the task's operator (and, given, the prior) and, for the others, why
    not (a solver that needs an SVD cannot run motion deblurring; DPS cannot use a latent prior): reported, not
    run."""
    from ..errors import SolverError
    from .measure import operator_for

    op, _ = operator_for(task, (3, size, size), 0)
    usable, refused = {}, {}
    for label, solver in solvers.items():
        try:
            solver.check_operator(op)
            if prior is not None:
                solver.check_prior(prior)
        except SolverError as exc:
            refused[label] = str(exc)
        else:
            usable[label] = solver
    return usable, refused


def _estimate_paths(out: Path, solver: str, name: str) -> tuple[Path, Path]:
    return out / solver / f"{name}.png", out / solver / f"{name}.json"


def run_images(
    images: Sequence[tuple[str, torch.Tensor]],
    solvers: dict[str, Any],
    prior: Any,
    task: str,
    noise: NoiseModel | float,
    out: Path,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
    mine: Callable[[int], bool] = lambda i: True,
    callback: Callable[[str, str, Any], None] | None = None,
    on_done: Callable[[str, str, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Restore this share of the images with every solver, skipping what an earlier run with the same settings
    finished; write the references, measurements, estimates and per-estimate records.

    Args:
        images: ``(name, clean)`` pairs from :func:`load_dataset` (every rank passes all of them).
        solvers: display name -> configured solver.
        prior: the prior.
        task: the task string.
        noise: the noise model, or ``sigma_y`` in [-1, 1] units.
        out: the output folder (created).
        seed: base seed; each image's seeds derive from it and its name (:meth:`Seeds.for_image`).
        device: where to solve.
        settings: what else the results depend on (prior, runtime), part of each fingerprint.
        overwrite: replace finished estimates made with other settings instead of refusing.
        mine: which image indices this process handles.
        callback: ``(solver, image, StepInfo)`` after every solver step.
        on_done: ``(solver, image, record)`` after each estimate (also for skipped ones).

    Returns:
        The records of this share's estimates.

    Raises:
        ReddiffError: finished estimates in ``out`` were made with other settings (and not ``overwrite``).
    """
    noise = as_noise(noise)
    device = torch.device(device)
    records = []
    for index, (name, clean) in enumerate(images):
        if not mine(index):
            continue
        seeds = Seeds.for_image(seed, name)
        op, y = simulate(clean, task, noise, seeds.operator)
        save_image(clean, out / REFERENCES / f"{name}.png")
        save_image(op.y_to_image(y).clamp(-1, 1), out / MEASUREMENTS / f"{name}.png")
        for label, solver in solvers.items():
            png, rec_path = _estimate_paths(out, label, name)
            fields = {"image": name, "task": task, "noise": noise.params(), "seed": seed, "size": clean.shape[-1],
                      "solver": solver.to_dict(), **(settings or {})}
            fingerprint = settings_fingerprint(fields)
            if rec_path.is_file():
                old = read_record(rec_path)
                if old.get("settings_sha256") == fingerprint and png.is_file():
                    record = {**old, "skipped": True}
                    records.append(record)
                    if on_done is not None:
                        on_done(label, name, record)
                    continue
                if not overwrite:
                    raise ReddiffError(f"{rec_path} was made with other settings; pass --overwrite to replace it or "
                                       "choose another --output")
            job = Job(name, op, y, seeds, clean=clean)

            def step(info: Any, label: str = label, name: str = name) -> None:
                if callback is not None:
                    callback(label, name, info)

            t0 = time.perf_counter()
            (outcome,) = solve_jobs(solver, prior, [job], device, noise, callback=step)
            save_image(outcome.estimate.clamp(-1, 1), png)
            record = {"image": name, "solver": label, "settings_sha256": fingerprint, "settings": fields,
                      **outcome.scores.to_dict(), "seconds": round(time.perf_counter() - t0, 3),
                      "network_evals": outcome.network_evals}
            write_json(record, rec_path)
            records.append(record)
            if on_done is not None:
                on_done(label, name, record)
    return records


def mean_and_se(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and its standard error (sample standard deviation / sqrt(n); None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _batches(paths: Sequence[Path], size: int) -> Any:
    for i in range(0, len(paths), size):
        yield torch.cat([load_image(p, channels=3) for p in paths[i:i + size]])


def summarize(
    out: Path,
    names: Sequence[str],
    solvers: Sequence[str],
    metrics: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    kid_subsets: int | None = None,
) -> dict[str, Any]:
    """Score every solver's estimates in ``out`` against the references, from the written files.

    Per-image metrics (PSNR, SSIM, LPIPS) are scored on the saved 8-bit estimate and reference; the table holds
    their mean and standard error. Set metrics (FID, KID) compare the set of estimates with the set of references.

    Args:
        out: the output folder of :func:`run_images`.
        names: the images.
        solvers: the solvers' display names (their folders).
        metrics: metric names from :data:`reddiff.metrics.registry.METRICS` (available ones only).
        device: where the feature networks run.
        batch_size: images per feature-network batch.
        kid_subsets: KID's number of subsets (default :data:`~reddiff.metrics.distribution.KID_SUBSETS`).

    Returns:
        ``{"solvers": {name: {metric: {"mean", "se"} | {"value"[, "std"]}, "seconds", "network_evals",
        "images"}}, "per_image": ...}``.
    """
    from ..metrics.distribution import KID_SUBSETS, InceptionFeatures, fid_from_features, kid_from_features
    from ..metrics.perceptual import LPIPS

    device = torch.device(device)
    refs = [out / REFERENCES / f"{n}.png" for n in names]
    nets: dict[str, Any] = {}
    for m in metrics:
        if m in ("lpips", "lpips-vgg"):
            nets[m] = LPIPS.published("alex" if m == "lpips" else "vgg").to(device)
    if {"fid", "kid"} & set(metrics):
        nets["inception"] = InceptionFeatures.published().to(device)

    def features(paths: Sequence[Path]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([nets["inception"](b.to(device)).double().cpu() for b in _batches(paths, batch_size)])

    ref_features = features(refs) if "inception" in nets else None
    report: dict[str, Any] = {"solvers": {}, "per_image": {}}
    for label in solvers:
        per_image = []
        ests = [_estimate_paths(out, label, n)[0] for n in names]
        for n, est_path, ref_path in zip(names, ests, refs, strict=True):
            rec = read_record(_estimate_paths(out, label, n)[1])
            est, ref = load_image(est_path, channels=3), load_image(ref_path, channels=3)
            row: dict[str, Any] = {"image": n, **score(est, ref).to_dict(), "seconds": rec.get("seconds"),
                                   "network_evals": rec.get("network_evals")}
            with torch.no_grad():
                for m in ("lpips", "lpips-vgg"):
                    if m in nets:
                        row[m] = float(nets[m](est.to(device), ref.to(device))[0])
            per_image.append(row)
        summary: dict[str, Any] = {"images": len(per_image)}
        for m in metrics:
            if m in ("fid", "kid"):
                continue
            vals = [r[m] for r in per_image if r.get(m) is not None]
            if vals:
                mean, se = mean_and_se(vals)
                summary[m] = {"mean": mean, "se": se}
        if ref_features is not None:
            est_features = features(ests)
            if "fid" in metrics:
                summary["fid"] = {"value": fid_from_features(est_features, ref_features)}
            if "kid" in metrics:
                k, s = kid_from_features(est_features, ref_features, subsets=kid_subsets or KID_SUBSETS)
                summary["kid"] = {"value": k * 1e3, "std": s * 1e3}
        for key in ("seconds", "network_evals"):
            vals = [r[key] for r in per_image if r.get(key) is not None]
            summary[key] = sum(vals) / len(vals) if vals else None
        report["solvers"][label] = summary
        report["per_image"][label] = per_image
    return report


def markdown_table(report: dict[str, Any], metrics: Sequence[str]) -> str:
    """The summary as a Markdown table: mean ± standard error per metric, FID, KID x 10^3 ± std, s/image."""
    from ..metrics.registry import METRICS

    heads = [f"{m.upper() if m != 'lpips-vgg' else 'LPIPS-VGG'} {'↑' if METRICS[m].better == 'higher' else '↓'}"
             + (" (×10³)" if m == "kid" else "") for m in metrics]
    lines = ["| solver | " + " | ".join(heads) + " | s / image | NFEs |", "| --- " * (len(metrics) + 3) + "|"]
    for label, s in report["solvers"].items():
        cells = []
        for m in metrics:
            v = s.get(m)
            if v is None:
                cells.append("n/a")
            elif "mean" in v:
                digits = 2 if m == "psnr" else 4
                se = f" ± {v['se']:.{digits}f}" if v.get("se") is not None else ""
                cells.append(f"{v['mean']:.{digits}f}{se}")
            else:
                cells.append(f"{v['value']:.2f}" + (f" ± {v['std']:.2f}" if "std" in v else ""))
        secs = f"{s['seconds']:.2f}" if s.get("seconds") is not None else "-"
        nfes = f"{s['network_evals']:.0f}" if s.get("network_evals") is not None else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {secs} | {nfes} |")
    lines += [f"\nNot run: {label} ({why})." for label, why in (report.get("refused") or {}).items()]
    return "\n".join(lines) + "\n"


def write_grid(out: Path, names: Sequence[str], solvers: Sequence[str], labels: dict[str, str]) -> Path:
    """``grid.png``: one row per image (the first :data:`GRID_IMAGES`): measurement, each solver, reference."""
    rows = []
    for i, n in enumerate(names[:GRID_IMAGES]):
        tiles = [load_image(out / MEASUREMENTS / f"{n}.png", channels=3)]
        tiles += [load_image(_estimate_paths(out, s, n)[0], channels=3) for s in solvers]
        tiles.append(load_image(out / REFERENCES / f"{n}.png", channels=3))
        caption = ["measured", *[labels.get(s, s) for s in solvers], "reference"] if i == 0 else None
        rows.append(make_grid(tiles, caption))
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    return save_image(torch.cat(rows, dim=1), out / "grid.png")


def evaluate(
    prior: Any,
    data: str | Path,
    output: str | Path,
    *,
    task: str | None = None,
    protocol: str | None = None,
    solvers: Sequence[str] | dict[str, Any] = ("reddiff",),
    sigma_y: float | None = None,
    size: int | None = None,
    limit: int | None = None,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate solvers on a folder of clean images by the papers' protocol, in one call.

    Args:
        prior: the prior (:func:`reddiff.load_prior`).
        data: a folder of clean images (or one image).
        output: the output folder (rerunning resumes).
        task: the task; or ``protocol`` (a key of :data:`PROTOCOLS`) gives task, noise and size.
        protocol: a published setting; ``task``, ``sigma_y`` and ``size`` override its fields.
        solvers: solver names (RED-diff takes the prior's preset for the task) or display name -> solver.
        sigma_y: noise in 0..1 pixel units (default: the protocol's, else 0).
        size: the image side (default: the protocol's, else 256).
        limit: use the first ``limit`` images.
        metrics: metric names (default: every available one).
        seed: base seed.
        device: where to run.
        overwrite: replace results made with other settings.

    Returns:
        The report written to ``evaluation.json``.
    """
    from ..metrics.registry import METRICS as ALL
    from ..metrics.registry import available_metrics, require
    from ..solvers import SOLVERS
    from ..tools.presets import preset_for_prior

    task, sigma, side, proto = resolve_protocol(protocol, task, sigma_y, size)
    chosen = list(metrics) if metrics is not None else available_metrics()
    for m in chosen:
        if m not in ALL:
            raise ReddiffError(f"unknown metric {m!r}; accepted: {', '.join(ALL)}")
        require(m, ALL[m].weights)
    if isinstance(solvers, dict):
        configured = dict(solvers)
    else:
        configured = {}
        for name in solvers:
            if name not in SOLVERS:
                raise ReddiffError(f"unknown solver {name!r}; accepted: {', '.join(SOLVERS)}")
            preset = preset_for_prior(prior, task, 2 * sigma) if name == "reddiff" else {}
            configured[name] = SOLVERS[name](**preset)
    configured, refused = usable_solvers(configured, task, side, prior)
    if not configured:
        raise ReddiffError(f"no solver can run {task!r}: " + "; ".join(refused.values()))
    images = load_dataset(data, side, limit)
    out = Path(output)
    noise = as_noise(2 * sigma)
    run_images(images, configured, prior, task, noise, out, seed=seed, device=device,
               settings=prior.fingerprint(), overwrite=overwrite)
    names = [n for n, _ in images]
    report = summarize(out, names, list(configured), chosen, device=device)
    report.update(protocol_record(task, sigma, side, seed, proto, len(names), chosen))
    report["refused"] = refused
    finish(out, report, names, list(configured), {k: getattr(s, "label", k) for k, s in configured.items()}, chosen)
    return report


def protocol_record(task: str, sigma_y: float, size: int, seed: int, proto: Protocol | None, n: int,
                    metrics: Sequence[str]) -> dict[str, Any]:
    """The protocol fields of a report."""
    return {"task": task, "sigma_y": sigma_y, "size": size, "seed": seed, "images": n, "metrics": list(metrics),
            "protocol": asdict(proto) if proto else None,
            "preparation": "centre crop and resize by guided-diffusion's rule (box halving, bicubic, centre crop)"}


def finish(out: Path, report: dict[str, Any], names: Sequence[str], solvers: Sequence[str], labels: dict[str, str],
           metrics: Sequence[str]) -> None:
    """Write ``evaluation.json``, ``evaluation.md`` and ``grid.png``."""
    from ..io import atomic_path

    report["grid"] = str(write_grid(out, names, solvers, labels))
    table = markdown_table(report, metrics)
    report["table"] = table
    write_json(report, out / "evaluation.json")
    with atomic_path(out / "evaluation.md") as tmp:
        tmp.write_text(table)
