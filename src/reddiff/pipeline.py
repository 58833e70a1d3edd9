"""One call from a clean image to a restored one: simulate a measurement, solve it, measure the result.

Used by ``reddiff demo``, the benchmarks and the preset sweep, so they all measure the same thing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .io import to_unit
from .metrics import psnr, ssim
from .operators import make_operator
from .presets import load_presets, preset_for
from .solvers.base import Callback, Problem
from .solvers.reddiff import RedDiff

__all__ = ["Restoration", "simulate", "restore", "solver_with_preset"]


@dataclass
class Restoration:
    """The outcome of :func:`restore` for one image (tensors are ``[1, C, H, W]`` in [-1, 1])."""

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


def simulate(x: torch.Tensor, task: str, sigma_y: float, seed: int = 0) -> tuple[Any, torch.Tensor]:
    """Build the operator of ``task`` for ``x`` (seeded) and return ``(operator, y = A(x) + sigma_y * noise)``.

    Args:
        x: clean image ``[1, C, H, W]`` in [-1, 1].
        task: task string.
        sigma_y: noise standard deviation in [-1, 1] units.
        seed: seed of the operator's random choices and of the noise.
    """
    gen = torch.Generator().manual_seed(seed)
    op = make_operator(task, tuple(x.shape[1:]), generator=gen).to(x.device)
    clean = op.A(x)
    noise = torch.randn(clean.shape, generator=gen, dtype=clean.dtype).to(x.device)
    return op, clean + sigma_y * noise


def solver_with_preset(prior: Any, task: str, sigma_y: float, **overrides: Any) -> tuple[RedDiff, dict[str, Any]]:
    """RED-diff for ``task`` with the prior's preset (if any) and explicit ``overrides`` on top."""
    preset = preset_for(load_presets(prior.info.get("path")), task, sigma_y)
    settings = {**preset, **{k: v for k, v in overrides.items() if v is not None}}
    return RedDiff(**settings), preset


def _metric_unit(x: torch.Tensor) -> torch.Tensor:
    return to_unit(x.double().cpu())


def restore(
    prior: Any,
    x: torch.Tensor,
    task: str,
    sigma_y: float,
    seed: int = 0,
    callback: Callback | None = None,
    **solver_overrides: Any,
) -> Restoration:
    """Simulate a measurement of ``x``, restore it with RED-diff and measure PSNR/SSIM against ``x``.

    Args:
        prior: the diffusion prior.
        x: clean image ``[1, C, H, W]`` in [-1, 1].
        task: task string.
        sigma_y: noise in [-1, 1] units.
        seed: seed of the operator, the noise and the solver.
        callback: per-step callback of the solver.
        **solver_overrides: RED-diff fields that override the preset (``lam=...``, ``steps=...``).
    """
    op, y = simulate(x, task, sigma_y, seed)
    solver, preset = solver_with_preset(prior, op.task, sigma_y, **solver_overrides)
    t0 = time.perf_counter()
    mu = solver(prior, Problem(y, op, sigma_y), generator=torch.Generator().manual_seed(seed + 1), callback=callback)
    seconds = time.perf_counter() - t0
    est = mu.clamp(-1, 1)
    a, b = _metric_unit(est), _metric_unit(x)
    base = None
    if callable(getattr(op, "A_dagger", None)):
        with torch.no_grad():
            base = float(psnr(_metric_unit(op.A_dagger(y).clamp(-1, 1)), b)[0])
    return Restoration(
        task=op.task,
        operator=op,
        y=y,
        estimate=est.cpu(),
        measurement_image=op.y_to_image(y).clamp(-1, 1).cpu(),
        clean=x.cpu(),
        psnr=float(psnr(a, b)[0]),
        ssim=float(ssim(a, b)[0]) if min(x.shape[-2:]) >= 11 else None,
        psnr_measurement=base,
        seconds=seconds,
        solver=solver.to_dict(),
        preset=preset,
    )
