"""DDIM (Song, Meng & Ermon, ICLR 2021): unconditional sampling, and the step arithmetic the other samplers share.

The generalised (non-Markovian) reverse step of DDIM, eq. 12 of the paper, in this library's VP notation
(``abar`` is the paper's ``alpha``):

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)        (eq. 16)

``eta = 0`` is the deterministic DDIM sampler and ``eta = 1`` is DDPM's ancestral sampler (posterior variance
``beta_tilde``) on the visited timesteps. DPS, ΠGDM and DDRM reuse :func:`ddim_step` / :func:`ddim_sigma` and the
loop :func:`sample_loop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SolverError
from .base import (
    Callback,
    GeneratorLike,
    Problem,
    SolverRecord,
    StepInfo,
    check_finite,
    per_sample_generators,
    randn_like_per_sample,
)

__all__ = ["DDIM", "ddim_sigma", "ddim_step", "sample_loop", "StepUpdate", "check_steps", "check_unit"]

#: ``update(x_t, t, abar_t, abar_prev) -> (x_prev, x0_hat, losses)``: one reverse step of a sampler.
StepUpdate = Callable[[torch.Tensor, int, float, float], "tuple[torch.Tensor, torch.Tensor, dict[str, float]]"]


def ddim_sigma(abar_t: float, abar_prev: float, eta: float) -> float:
    """The DDIM noise level ``sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)`` (eq. 16).

    Args:
        abar_t: ``abar`` at the current timestep.
        abar_prev: ``abar`` at the next (less noisy) timestep; 1 for the final step to ``x0``.
        eta: 0 (deterministic DDIM) .. 1 (DDPM ancestral).
    """
    if eta == 0.0 or abar_prev >= 1.0:
        return 0.0
    return eta * math.sqrt(max((1.0 - abar_prev) / (1.0 - abar_t), 0.0)) * math.sqrt(max(1.0 - abar_t / abar_prev, 0.0))


def ddim_step(
    x0_hat: torch.Tensor,
    eps_hat: torch.Tensor,
    abar_t: float,
    abar_prev: float,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One DDIM reverse step (eq. 12): ``sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z``.

    Args:
        x0_hat: the clean-data prediction ``[B, ...]``.
        eps_hat: the noise prediction paired with it, same shape.
        abar_t: ``abar`` at the current timestep (only used for ``sigma``).
        abar_prev: ``abar`` at the target timestep (1 for the final step, which returns ``x0_hat``).
        eta: stochasticity, 0 .. 1.
        noise: standard normal draws shaped like ``x0_hat`` (may be None when ``sigma == 0``).

    Returns:
        ``x_prev``, shaped like ``x0_hat``.
    """
    sigma = ddim_sigma(abar_t, abar_prev, eta)
    c_eps = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0))
    x_prev = math.sqrt(abar_prev) * x0_hat + c_eps * eps_hat
    if sigma > 0.0:
        if noise is None:
            raise SolverError("ddim_step needs noise when sigma > 0 (eta > 0)")
        x_prev = x_prev + sigma * noise
    return x_prev


def sample_loop(
    solver: str,
    prior: Any,
    x_T: torch.Tensor,  # noqa: N803 - the paper's name
    steps: int,
    update: StepUpdate,
    callback: Callback | None = None,
    hint: str = "check the prior and the measurement",
) -> torch.Tensor:
    """The reverse-diffusion loop every sampler shares: descending timesteps, ``update`` per step, checks, callback.

    The ``steps`` timesteps are those of ``prior.schedule.timesteps(steps)`` (evenly spaced over 0..T-1, ending at
    0); the last step goes from ``t = 0`` to ``abar_prev = 1``, i.e. to the clean estimate.

    Args:
        solver: the solver's display name, for error messages.
        prior: the diffusion prior (its ``schedule``).
        x_T: the starting noise ``[B, ...]``.
        steps: number of reverse steps.
        update: the solver's step, ``update(x_t, t, abar_t, abar_prev) -> (x_prev, x0_hat, losses)``.
        callback: called with a :class:`StepInfo` (``x`` = that step's ``x0_hat``) after every step.
        hint: what to suggest when the sample stops being finite.

    Returns:
        The final sample (detached).
    """
    timesteps = prior.schedule.timesteps(steps, "descending").tolist()
    abar = prior.schedule.abar  # float64
    x = x_T
    for i, t in enumerate(timesteps):
        a_t = float(abar[t])
        a_prev = float(abar[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        x, x0_hat, losses = update(x, int(t), a_t, a_prev)
        x = x.detach()
        check_finite(solver, i, int(t), x, "sample", hint)
        if callback is not None:
            callback(StepInfo(step=i, num_steps=len(timesteps), t=int(t), x=x0_hat.detach(), losses=losses))
    return x


def check_steps(solver: str, steps: int) -> None:
    """Raise unless ``steps`` is an integer >= 1."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise SolverError(f"{solver}: steps must be an integer >= 1, got {steps!r}")


def check_unit(solver: str, what: str, value: float) -> None:
    """Raise unless ``0 <= value <= 1``."""
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise SolverError(f"{solver}: {what} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class DDIM(SolverRecord):
    """Unconditional DDIM sampling (Song et al. 2021, Algorithm via eq. 12); ignores the measurement.

    Called like every solver, ``DDIM()(prior, problem)`` draws one prior sample per measurement in ``problem``
    (only its batch size, shape, dtype and device are used); :meth:`sample` takes a shape instead.

    Args:
        steps: number of reverse steps (any number 1..T; 1000 with ``eta=1`` is DDPM).
        eta: η of eq. 16: 0 deterministic DDIM (the paper's default for fast sampling), 1 ancestral DDPM.
    """

    steps: int = 100
    eta: float = 0.0

    name = "ddim"

    def __post_init__(self) -> None:
        check_steps("DDIM", self.steps)
        check_unit("DDIM", "eta", self.eta)

    def sample(
        self,
        prior: Any,
        shape: tuple[int, ...],
        generator: GeneratorLike = None,
        callback: Callback | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``shape[0]`` samples of shape ``shape[1:]`` from the prior.

        Args:
            prior: a :class:`reddiff.DiffusionPrior`.
            shape: ``(B, ...)``.
            generator: a ``torch.Generator``, one per sample, an integer seed, or None.
            callback: called with a :class:`StepInfo` after every step.
            dtype: dtype of the samples.
            device: device of the samples (default: CPU).
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        gens = per_sample_generators(generator, int(shape[0]), device)
        x_T = randn_like_per_sample(torch.empty(shape, dtype=dtype, device=device), gens)  # noqa: N806

        def update(x: torch.Tensor, t: int, a_t: float, a_prev: float):
            with torch.no_grad():
                eps, x0 = prior.predict(x, t)
            noise = randn_like_per_sample(x, gens) if ddim_sigma(a_t, a_prev, self.eta) > 0 else None
            return ddim_step(x0, eps, a_t, a_prev, self.eta, noise), x0, {}

        return sample_loop("DDIM", prior, x_T, self.steps, update, callback)

    def __call__(
        self,
        prior: Any,
        problem: Problem,
        generator: GeneratorLike = None,
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Unconditional samples shaped like ``problem``'s unknowns (the measurement is not used)."""
        return self.sample(prior, problem.x_shape, generator, callback, dtype=problem.y.dtype, device=problem.y.device)
