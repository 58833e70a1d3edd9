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

from ..operators.base import SVDOperator
from ..params import hyper
from .base import SampleContext, Sampler, randn_like_per_sample
from .ddim import STEPS, UNIT, spacing_field

__all__ = ["DDRM"]


@dataclass(frozen=True)
class DDRM(Sampler):
    """DDRM (Kawar et al. 2022) for SVD-structured linear operators. Defaults are the paper's."""

    steps: int = hyper(20, "number of reverse steps", range=STEPS)
    eta: float = hyper(0.85, "η, the stochasticity of the missing and noisy spectral coordinates", range=UNIT)
    eta_b: float = hyper(1.0, "η_b, how strongly the less-noisy coordinates are pulled to the measurement", range=UNIT)
    rtol: float = hyper(1e-10, "singular values at or below rtol * max(s) are treated as zero (missing)", range=UNIT)
    timestep_spacing: str = spacing_field()

    name = "ddrm"
    label = "DDRM"
    requires = (SVDOperator,)

    def prepare(self, ctx: SampleContext) -> dict[str, Any]:
        """Spectral quantities, fixed over the run: ``s`` padded with zeros to ``n``, ``ybar = U^T y / s`` on the
        observed coordinates, and the per-coordinate noise level ``sigma_y / s``."""
        op, y, sigma_y = ctx.problem.operator, ctx.problem.y, ctx.problem.sigma_y
        n = math.prod(ctx.problem.x_shape[1:])
        s_r = op.singulars().to(device=y.device, dtype=y.dtype)
        s = torch.cat([s_r, s_r.new_zeros(n - s_r.numel())])
        observed = s > (self.rtol * float(s.max()) if s.numel() else 0.0)
        s_safe = torch.where(observed, s, torch.ones_like(s))
        uty = op.Ut(y)
        ybar = torch.cat([uty, uty.new_zeros(uty.shape[0], n - uty.shape[1])], dim=1) / s_safe
        ybar = torch.where(observed, ybar, torch.zeros_like(ybar))
        noise_level = torch.where(observed, sigma_y / s_safe, torch.full_like(s, math.inf))  # sigma_y / s_i
        return {"observed": observed, "ybar": ybar, "noise_level": noise_level}

    def step(self, ctx: SampleContext, x: torch.Tensor, t: int | float, a_t: float, a_prev: float):
        op = ctx.problem.operator
        observed, ybar, noise_level = ctx.state["observed"], ctx.state["ybar"], ctx.state["noise_level"]
        eta, eta_b = float(self.eta), float(self.eta_b)
        with torch.no_grad():
            _, x0 = ctx.prior.predict(x, t)
            sigma_t = math.sqrt((1.0 - a_t) / a_t)
            sigma_s = math.sqrt((1.0 - a_prev) / a_prev)
            xbar_t = op.Vt(x / math.sqrt(a_t))
            xhat = op.Vt(x0)
            z = randn_like_per_sample(xhat, ctx.generators)
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
