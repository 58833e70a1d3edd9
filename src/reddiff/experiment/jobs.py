"""Per-image jobs and running a solver on them: batching, per-image generators, timing, network evaluations, and
splitting a batch that does not fit in memory; and :func:`restore`, the one-call path from a clean image to a scored
restoration."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ReddiffError
from ..noise import NoiseModel
from ..operators import Operator, stack
from ..runtime import count_evals
from ..solvers.base import Callback, Problem, Solver, StepInfo
from .measure import MISFIT, Scores, Seeds, as_noise, measurement_fit, pinv_psnr, score, simulate

__all__ = ["Job", "Outcome", "group_batches", "solve_jobs", "Restoration", "restore", "sample_spread"]


@dataclass
class Job:
    """One image to restore.

    Attributes:
        name: the image's name (its file stem): output folder, seeds.
        operator: its forward model (built from its own seeds).
        y: its measurement ``[1, ...]``.
        seeds: its operator and solver seeds.
        clean: the clean image ``[1, C, H, W]`` when the measurement was simulated (None for a real measurement).
        source: the file it came from.
        settings: what the result depends on (inputs, task, noise, solver, prior, ...); its fingerprint decides
            whether an earlier result can be reused.
        samples: how many restorations of this measurement to draw together (one problem group: RED-diff's
            ``repulsion`` acts among them); the estimate is then their pixel-wise mean.
    """

    name: str
    operator: Operator
    y: torch.Tensor
    seeds: Seeds
    clean: torch.Tensor | None = None
    source: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    samples: int = 1


@dataclass
class Outcome:
    """A finished job.

    Attributes:
        job: the job.
        estimate: the solver's estimate ``[1, ...]`` on the CPU (not clipped).
        seconds: solve time per image (a batch's time divided by its size).
        network_evals: network evaluations of the batch it ran in.
        scores: PSNR/SSIM against the clean image (empty for real measurements).
        psnr_pinv: PSNR of the naive ``A_dagger(y)`` (linear operators with a clean image; else None).
        notes: the solver's one-line remarks during the run (e.g. the start RED-diff chose itself).
        samples: with ``job.samples > 1``, every sample ``[N, ...]`` on the CPU (not clipped); ``estimate`` is
            the mean of the samples clipped to the prior's data range. None for a single sample.
        sample_scores: the scores of each sample (with a clean image and several samples).
    """

    job: Job
    estimate: torch.Tensor
    seconds: float
    network_evals: int
    scores: Scores = field(default_factory=Scores)
    psnr_pinv: float | None = None
    notes: list[str] = field(default_factory=list)
    samples: torch.Tensor | None = None
    sample_scores: list[Scores] = field(default_factory=list)

    @property
    def spread(self) -> torch.Tensor | None:
        """The samples' pixel-wise standard deviation (of the clipped samples, averaged over channels),
        ``[1, 1, H, W]`` in the images' [-1, 1] units; None for a single sample."""
        return None if self.samples is None else sample_spread(self.samples)


def sample_spread(samples: torch.Tensor) -> torch.Tensor:
    """Pixel-wise standard deviation of ``[N, C, H, W]`` samples (clipped to [-1, 1]), averaged over channels:
    ``[1, 1, H, W]``."""
    return samples.clamp(-1, 1).std(dim=0, unbiased=False).mean(dim=0, keepdim=True)[None]


def group_batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Batches of at most ``batch_size`` jobs whose image and measurement shapes agree (first-seen order)."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault((tuple(job.operator.x_shape), tuple(job.y.shape)), []).append(job)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device="cuda" if device.type == "cuda" else "cpu").manual_seed(seed)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or "can't allocate memory" in str(exc)


def misfit_hint(solver: Solver) -> str:
    """What to change when a solver's estimate does not fit the measurement."""
    min_steps = getattr(solver, "min_steps", None)
    steps = getattr(solver, "steps", None)
    if min_steps is not None and steps is not None and steps < 4 * min_steps:
        return f"use more steps (now {steps}; it needs at least {min_steps}, often more)"
    return str(getattr(solver, "hint", "check the prior and the measurement"))


def solve_jobs(
    solver: Solver,
    prior: Any,
    batch: Sequence[Job],
    device: torch.device,
    noise: NoiseModel,
    *,
    callback: Callback | None = None,
    notes: list[str] | None = None,
    say: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Solve one batch of jobs (one network batch); each job keeps its own operator and generator, so its result
    is the one it would have alone. A batch that runs out of memory is split in halves (a note says so).

    Args:
        solver: the solver.
        prior: the prior, on ``device``.
        batch: jobs with equal shapes (see :func:`group_batches`).
        device: where to solve.
        noise: the measurement noise model (its likelihood is the data term).
        callback: per-step callback of the solver.
        notes: receives a line for every split batch and every new remark of the solver (:attr:`StepInfo.note`).
        say: prints such a line as it happens.

    Raises:
        ReddiffError: one image alone does not fit in memory.
    """
    notes = notes if notes is not None else []
    counts = [max(1, int(job.samples)) for job in batch]
    op = stack([job.operator.to(device) for job, n in zip(batch, counts) for _ in range(n)])
    y = torch.cat([job.y.expand(n, *job.y.shape[1:]) for job, n in zip(batch, counts)]).to(device)
    gens = [_generator(job.seeds.for_sample(k, job.name), device) for job, n in zip(batch, counts) for k in range(n)]
    groups = tuple(i for i, n in enumerate(counts) for _ in range(n)) if max(counts) > 1 else None
    remarks: list[str] = []

    def on_step(info: StepInfo) -> None:
        if info.note is not None and info.note not in remarks:
            remarks.append(info.note)
            if info.note not in notes:
                notes.append(info.note)
                if say is not None:
                    say(f"reddiff: note: {info.note}")
        if callback is not None:
            callback(info)

    t0 = time.perf_counter()
    try:
        with count_evals(prior) as evals:
            mu = solver(prior, Problem(y, op, noise=noise, groups=groups), generator=gens, callback=on_step)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not _is_oom(exc):
            raise
        del y, op
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(batch) == 1:
            raise ReddiffError(f"out of memory on {device} for one {tuple(batch[0].operator.x_shape)} image; use a "
                               "smaller image, --device cpu, or a smaller prior") from None
        half = len(batch) // 2
        notes.append(f"a batch of {len(batch)} did not fit in memory on {device}: split into {half} + "
                     f"{len(batch) - half} (use --batch-size {half} to avoid the retry)")
        if say is not None:
            say(f"reddiff: note: {notes[-1]}")
        kwargs = {"callback": callback, "notes": notes, "say": say}
        return (solve_jobs(solver, prior, batch[:half], device, noise, **kwargs)
                + solve_jobs(solver, prior, batch[half:], device, noise, **kwargs))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / len(batch)
    mu = mu.cpu()
    outcomes = []
    start = 0
    data_range = getattr(prior, "data_range", None)
    for job, n in zip(batch, counts):
        job.operator = job.operator.cpu()
        drawn = mu[start : start + n]
        start += n
        job_notes = list(remarks)
        fit = measurement_fit(job.operator, job.y.cpu().to(drawn.dtype), drawn, data_range)
        if fit >= MISFIT:  # the solver did not restore this measurement: say so wherever its result goes
            job_notes.append(f"{solver.label}'s estimate of {job.name} fits the measurement no better than a blank "
                             f"image (residual {fit:.2f}x): it is not a restoration; {misfit_hint(solver)}")
            notes.append(job_notes[-1])
            if say is not None:
                say(f"reddiff: warning: {job_notes[-1]}")
        samples = drawn if n > 1 else None
        # the mean of the samples as they are saved (clipped to the data's range)
        est = (drawn.clamp(*data_range) if data_range is not None else drawn).mean(dim=0, keepdim=True) if n > 1 \
            else drawn
        scores, base, per_sample = Scores(), None, []
        if job.clean is not None:
            scores = score(est.clamp(-1, 1), job.clean)
            base = pinv_psnr(job.operator, job.y.cpu(), job.clean.cpu())
            if samples is not None:
                per_sample = [score(s[None].clamp(-1, 1), job.clean) for s in samples]
        outcomes.append(Outcome(job, est, seconds, evals.count, scores, base, job_notes, samples, per_sample))
    return outcomes


@dataclass
class Restoration:
    """The outcome of :func:`restore` for one image (tensors are ``[1, C, H, W]`` in [-1, 1], on the CPU).

    Attributes:
        task: the canonical task string.
        operator: the forward model.
        y: the simulated measurement.
        estimate: the solver's estimate, clipped to [-1, 1].
        measurement_image: the measurement as a person would look at it.
        clean: the clean image.
        psnr: PSNR of the estimate (as saved, 8 bits) against the clean image.
        ssim: SSIM likewise (None for images under 11 pixels).
        psnr_measurement: PSNR of the naive ``A_dagger(y)`` (linear operators), else None.
        seconds: solve time.
        solver: the solver's fields (run record).
        preset: the prior's preset the solver started from (empty if none).
        notes: the solver's one-line remarks (e.g. the start RED-diff chose itself).
        samples: with ``num_samples > 1``, every sample ``[N, C, H, W]`` clipped to [-1, 1] (``estimate`` is their
            mean); else None.
        sample_psnrs: each sample's PSNR (empty for a single sample).
        spread: the samples' pixel-wise standard deviation ``[1, 1, H, W]`` (:func:`sample_spread`), else None.
    """

    task: str
    operator: Any
    y: torch.Tensor
    estimate: torch.Tensor
    measurement_image: torch.Tensor
    clean: torch.Tensor
    psnr: float
    ssim: float | None
    psnr_measurement: float | None
    seconds: float
    solver: dict[str, Any] = field(default_factory=dict)
    preset: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    samples: torch.Tensor | None = None
    sample_psnrs: list[float] = field(default_factory=list)
    spread: torch.Tensor | None = None


def restore(
    prior: Any,
    x: torch.Tensor,
    task: str,
    noise: NoiseModel | float = 0.0,
    seed: int | Seeds = 0,
    callback: Callback | None = None,
    solver: Solver | None = None,
    num_samples: int = 1,
    **solver_overrides: Any,
) -> Restoration:
    """Simulate a measurement of ``x``, restore it and score the result: the whole experiment in one call.

    Args:
        prior: the diffusion prior.
        x: clean image ``[1, C, H, W]`` in [-1, 1].
        task: task string.
        noise: the noise model, or ``sigma_y`` in [-1, 1] units for Gaussian noise.
        seed: an integer (operator and noise from ``seed``, solver from ``seed + 1``) or :class:`Seeds`.
        callback: per-step callback of the solver.
        solver: the solver to use (default: RED-diff with the prior's preset for the task, if any).
        num_samples: restorations to draw of the one measurement (sample 0 is the single-sample result when they
            do not interact; with RED-diff's ``repulsion > 0`` they repel each other); the estimate is their mean.
        **solver_overrides: RED-diff fields over the preset (``lam=...``, ``steps=...``); only without ``solver``.

    Example:
        ``r = reddiff.restore(prior, x, "sr:4", 0.05); print(r.psnr)``;
        ``reddiff.restore(prior, x, "inpaint-box", num_samples=4, repulsion=0.1).spread``
    """
    from ..solvers.reddiff import RedDiff
    from ..tools.presets import preset_for_prior

    seeds = seed if isinstance(seed, Seeds) else Seeds.from_seed(seed)
    model = as_noise(noise)
    op, y = simulate(x, task, model, seeds.operator)
    preset: dict[str, Any] = {}
    if solver is None:
        preset = preset_for_prior(prior, op.task, model.sigma_y)
        solver = RedDiff.from_preset(prior, op.task, model.sigma_y, **solver_overrides)
    elif solver_overrides:
        raise ReddiffError("give either a solver or RED-diff overrides, not both")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ReddiffError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    job = Job(op.task, op, y, seeds, clean=x, samples=num_samples)
    (out,) = solve_jobs(solver, prior, [job], x.device, model, callback=callback)
    return Restoration(
        task=op.task, operator=op, y=y.cpu(), estimate=out.estimate.clamp(-1, 1),
        measurement_image=op.y_to_image(y.cpu()).clamp(-1, 1), clean=x.cpu(), psnr=float(out.scores.psnr),
        ssim=out.scores.ssim, psnr_measurement=out.psnr_pinv, seconds=out.seconds, solver=solver.to_dict(),
        preset=preset, notes=out.notes,
        samples=None if out.samples is None else out.samples.clamp(-1, 1),
        sample_psnrs=[float(sc.psnr) for sc in out.sample_scores], spread=out.spread,
    )
