"""The one experiment module every front end calls (the CLI, ``demo``, the benchmarks and the web app): seeds,
simulating a measurement, per-image jobs, solving them in batches, scoring by one rule, and the run records.

- :func:`simulate` ``(x, task, noise, seed) -> (operator, y)``
- :func:`score` ``(estimate, clean) -> Scores``: PSNR/SSIM of the estimate as saved (8 bits), SSIM from 11 px on
- :class:`Job` / :func:`solve_jobs`: typed per-image work, batches with per-image generators, out-of-memory splits
- :func:`restore`: clean image -> simulated measurement -> restoration -> scores, in one call
- :func:`write_outputs`, :func:`settings_fingerprint`, :class:`OutputDir`, :class:`ImageLocks`: what a run writes
"""

from __future__ import annotations

from .jobs import Job, Outcome, Restoration, group_batches, restore, sample_spread, solve_jobs
from .measure import (
    MISFIT,
    SSIM_MIN_SIZE,
    Scores,
    Seeds,
    as_noise,
    derive_seed,
    measurement_fit,
    operator_for,
    pinv_psnr,
    score,
    simulate,
)
from .records import (
    ESTIMATE,
    GRID,
    MASK,
    MEASUREMENT,
    RUN_JSON,
    SAMPLES,
    SPREAD,
    ImageLocks,
    OutputDir,
    mask_image,
    read_record,
    settings_fingerprint,
    write_outputs,
)

__all__ = [
    "ESTIMATE", "GRID", "MASK", "MEASUREMENT", "MISFIT", "RUN_JSON", "SAMPLES", "SPREAD", "SSIM_MIN_SIZE",
    "ImageLocks", "Job", "Outcome", "OutputDir", "Restoration", "Scores", "Seeds", "as_noise", "derive_seed",
    "group_batches", "mask_image", "measurement_fit", "operator_for", "pinv_psnr", "read_record", "restore",
    "sample_spread", "score", "settings_fingerprint", "simulate", "solve_jobs", "write_outputs",
]
