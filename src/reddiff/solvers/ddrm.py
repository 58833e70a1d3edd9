"""DDRM: denoising diffusion restoration models (Kawar, Elad, Ermon & Song, NeurIPS 2022, arXiv 2201.11793).

DDRM samples in the spectral space of ``A = U diag(s) V^T``, on the variance-exploding variable
``x_t / sqrt(abar_t) = x0 + sigma_t eps`` with ``sigma_t = sqrt(1 - abar_t) / sqrt(abar_t)``. With
``xbar = V^T x``, ``ybar_i = (U^T y)_i / s_i`` and ``xhat = V^T x0_hat``, a step to the noise level ``sigma_s`` is,
per spectral coordinate ``i`` (eq. 7-8 of the paper, ``eps ~ N(0, 1)``):

* missing (``s_i = 0``): ``xhat_i + sqrt(1 - eta^2) sigma_s (xbar_t,i - xhat_i) / sigma_t + eta sigma_s eps``
* noisy (``sigma_s < sigma_y / s_i``): ``xhat_i + sqrt(1 - eta^2) sigma_s (ybar_i - xhat_i) / (sigma_y / s_i)
  + eta sigma_s eps``
* less noisy (``sigma_s >= sigma_y / s_i``): ``(1 - eta_b) xhat_i + eta_b ybar_i
  + sqrt(sigma_s^2 - eta_b^2 sigma_y^2 / s_i^2) eps``

then back to the VP variable ``x_s = sqrt(abar_s) V xbar_s``. The last step goes to ``sigma = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .base import (
    Callback,
    GeneratorLike,
    Problem,
    SolverRecord,
    per_sample_generators,
    randn_like_per_sample,
    require_capabilities,
)
from .ddim import check_steps, check_unit, sample_loop

__all__ = ["DDRM"]


@dataclass(frozen=True)
class DDRM(SolverRecord):
    """DDRM (Kawar et al. 2022) for SVD-structured linear operators.

    Defaults are the paper's: ``eta = 0.85``, ``eta_b = 1.0``, 20 steps.

    Args:
        steps: number of reverse steps.
        eta: η, the stochasticity of the missing and noisy coordinates.
        eta_b: η_b, how strongly the less-noisy coordinates are pulled to the measurement.
        rtol: singular values at or below ``rtol * max(s)`` are treated as zero (missing).
    """

    steps: int = 20
    eta: float = 0.85
    eta_b: float = 1.0
    rtol: float = 1e-10

    name = "ddrm"

    def __post_init__(self) -> None:
        check_steps("DDRM", self.steps)
        check_unit("DDRM", "eta", self.eta)
        check_unit("DDRM", "eta_b", self.eta_b)
        check_unit("DDRM", "rtol", self.rtol)

    def __call__(
        self,
        prior: Any,
        problem: Problem,
        generator: GeneratorLike = None,
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Run DDRM and return one posterior sample per measurement (``[B, ...]``, detached).

        Args:
            prior: a :class:`reddiff.DiffusionPrior`.
            problem: the measurement, an SVD-structured operator and ``sigma_y``.
            generator: a ``torch.Generator``, one per sample, an integer seed, or None.
            callback: called with a :class:`StepInfo` (``x`` = ``x0_hat``) after every step.

        Raises:
            SolverError: the operator has no SVD structure, or the sample diverged.
        """
        op, y, sigma_y = problem.operator, problem.y, problem.sigma_y
        require_capabilities("DDRM", op, ("singulars", "Vt", "V", "Ut", "U"))
        gens = per_sample_generators(generator, problem.batch_size, y.device)
        x_T = randn_like_per_sample(torch.empty(problem.x_shape, dtype=y.dtype, device=y.device), gens)  # noqa: N806
        n = math.prod(problem.x_shape[1:])

        # spectral quantities, fixed over the run: s padded with zeros to n, ybar = U^T y / s on observed coordinates
        s_r = op.singulars().to(device=y.device, dtype=y.dtype)
        s = torch.cat([s_r, s_r.new_zeros(n - s_r.numel())])
        observed = s > (self.rtol * float(s.max()) if s.numel() else 0.0)
        s_safe = torch.where(observed, s, torch.ones_like(s))
        uty = op.Ut(y)
        ybar = torch.cat([uty, uty.new_zeros(uty.shape[0], n - uty.shape[1])], dim=1) / s_safe
        ybar = torch.where(observed, ybar, torch.zeros_like(ybar))
        noise_level = torch.where(observed, sigma_y / s_safe, torch.full_like(s, math.inf))  # sigma_y / s_i
        eta, eta_b = float(self.eta), float(self.eta_b)

        def update(x: torch.Tensor, t: int, a_t: float, a_prev: float):
            with torch.no_grad():
                _, x0 = prior.predict(x, t)
                sigma_t = math.sqrt((1.0 - a_t) / a_t)
                sigma_s = math.sqrt((1.0 - a_prev) / a_prev)
                xbar_t = op.Vt(x / math.sqrt(a_t))
                xhat = op.Vt(x0)
                z = randn_like_per_sample(xhat, gens)
                # missing coordinates: DDIM-like step towards xhat
                missing = xhat + math.sqrt(1 - eta**2) * sigma_s * (xbar_t - xhat) / sigma_t + eta * sigma_s * z
                # observed, measurement noisier than the target level: step towards ybar
                lvl = torch.where(observed & (noise_level > 0), noise_level, torch.ones_like(noise_level))
                noisy = xhat + math.sqrt(1 - eta**2) * sigma_s * (ybar - xhat) / lvl + eta * sigma_s * z
                # observed, measurement less noisy than the target level: (1 - eta_b) xhat + eta_b ybar + noise
                std = (sigma_s**2 - (eta_b * noise_level.clamp(max=sigma_s)) ** 2).clamp(min=0).sqrt()
                less_noisy = (1 - eta_b) * xhat + eta_b * ybar + std * z
                xbar_s = torch.where(~observed, missing, torch.where(sigma_s < noise_level, noisy, less_noisy))
                x_prev = math.sqrt(a_prev) * op.V(xbar_s).reshape(x.shape)
            return x_prev, x0, {}

        return sample_loop("DDRM", prior, x_T, self.steps, update, callback)
