"""DPS: diffusion posterior sampling (Chung, Kim, Mccann, Klasky & Ye, ICLR 2023, arXiv 2209.14687).

Algorithm 1 of the paper (Gaussian measurement noise): an ancestral (DDPM) step from the unconditional prediction,
followed by a gradient step on the measurement residual of the Tweedie estimate, differentiated through the network:

    x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t)                      (Tweedie, eq. 11)
    x'     = ancestral step from (x0_hat, eps_theta)                                           (eq. 7 / DDPM)
    x_prev = x' - zeta_t grad_{x_t} ||y - A(x0_hat)||^2,   zeta_t = zeta / ||y - A(x0_hat)||     (Alg. 1, App. C)

With the step normalised by the residual norm, ``zeta_t grad ||r||^2 = 2 zeta grad ||r||``; like the public
reference implementation we take ``zeta`` times the gradient of the norm ``||y - A(x0_hat)||`` itself (per sample;
for other noise models, its likelihood-weighted analogue :meth:`reddiff.noise.NoiseModel.residual_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..noise import robust_noise
from ..params import Range, hyper
from .base import SampleContext, Sampler, check_robust, robust_field
from .ddim import ETA_HELP, STEPS, UNIT, spacing_field

__all__ = ["DPS"]


@dataclass(frozen=True)
class DPS(Sampler):
    """Diffusion posterior sampling (Chung et al. 2023, Algorithm 1). Works with any differentiable operator.

    Defaults: ``zeta = 1.0`` (the step size of Chung et al., App. C.4, for super-resolution, inpainting and
    deblurring on FFHQ; they use smaller values, 0.3-0.6, for some ImageNet and nonlinear tasks), 1000 steps,
    ``eta = 1`` (the DDPM ancestral update of Algorithm 1; ``eta < 1`` gives the DDIM variant).
    """

    steps: int = hyper(1000, "number of reverse steps", range=STEPS)
    zeta: float = hyper(1.0, "step size ζ: the update subtracts zeta * grad_{x_t} ||y - A(x0_hat)||",
                        range=Range(low=0.0))
    eta: float = hyper(1.0, ETA_HELP, range=UNIT)
    timestep_spacing: str = spacing_field()
    robust: str = robust_field()

    name = "dps"
    label = "DPS"
    # with the bundled prior on 48 px training crops (sr:4, inpaint-random:0.8, deblur-gauss), 10 steps returned
    # images unrelated to the measurement on all 9 problems and 20 steps on 8 (3-4 dB, residual 2.1-3.4x the
    # measurement's size); 50 gave 16-28 dB (benchmarks/results/few_steps.json)
    min_steps = 50

    def normalize(self) -> None:
        check_robust(self)

    @property
    def hint(self) -> str:  # type: ignore[override]
        return f"try a smaller zeta (now {self.zeta})"

    def step(self, ctx: SampleContext, x: torch.Tensor, t: int | float, a_t: float, a_prev: float):
        problem = ctx.problem
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            # 1. Tweedie estimate, keeping the graph through the network
            eps, x0 = ctx.prior.predict(x_in, t)
            # 2. residual norm per sample, and its gradient w.r.t. x_t (not w.r.t. the network's weights)
            norm = robust_noise(self.robust, problem.noise).residual_norm(problem.y, problem.operator.A(x0))
            (grad,) = torch.autograd.grad(norm.sum(), x_in)
        # 3. unconditional ancestral / DDIM step
        x_prev = self.ddim_update(ctx, x0.detach(), eps.detach(), a_t, a_prev)
        # 4. measurement-consistency gradient step, zeta_t = zeta / ||y - A(x0_hat)||
        return x_prev - self.zeta * grad, x0.detach(), {"residual": float(norm.detach().mean())}
