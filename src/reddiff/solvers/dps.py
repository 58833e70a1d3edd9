"""DPS: diffusion posterior sampling (Chung, Kim, Mccann, Klasky & Ye, ICLR 2023, arXiv 2209.14687).

Algorithm 1 of the paper (Gaussian measurement noise): an ancestral (DDPM) step from the unconditional prediction,
followed by a gradient step on the measurement residual of the Tweedie estimate, differentiated through the network:

    x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t)                      (Tweedie, eq. 11)
    x'     = ancestral step from (x0_hat, eps_theta)                                           (eq. 7 / DDPM)
    x_prev = x' - zeta_t grad_{x_t} ||y - A(x0_hat)||^2,   zeta_t = zeta / ||y - A(x0_hat)||     (Alg. 1, App. C)

With the step normalised by the residual norm, ``zeta_t grad ||r||^2 = 2 zeta grad ||r||``; like the public
reference implementation we take ``zeta`` times the gradient of the norm ``||y - A(x0_hat)||`` itself (per sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SolverError
from .base import Callback, GeneratorLike, Problem, SolverRecord, per_sample_generators, randn_like_per_sample
from .ddim import check_steps, check_unit, ddim_sigma, ddim_step, sample_loop

__all__ = ["DPS"]


@dataclass(frozen=True)
class DPS(SolverRecord):
    """Diffusion posterior sampling (Chung et al. 2023, Algorithm 1). Works with any differentiable operator.

    Defaults: ``zeta = 1.0`` (the step size of Chung et al., App. C.4, for super-resolution, inpainting and
    deblurring on FFHQ; they use smaller values, 0.3-0.6, for some ImageNet and nonlinear tasks), 1000 steps,
    ``eta = 1`` (the DDPM ancestral update of Algorithm 1; ``eta < 1`` gives the DDIM variant).

    Args:
        steps: number of reverse steps (the paper: 1000).
        zeta: step size ζ; the update subtracts ``zeta * grad_{x_t} ||y - A(x0_hat)||``.
        eta: η of the DDIM/DDPM update (1 = ancestral DDPM as in the paper).
    """

    steps: int = 1000
    zeta: float = 1.0
    eta: float = 1.0

    name = "dps"

    def __post_init__(self) -> None:
        check_steps("DPS", self.steps)
        check_unit("DPS", "eta", self.eta)
        if not (isinstance(self.zeta, int | float) and math.isfinite(self.zeta) and self.zeta >= 0):
            raise SolverError(f"DPS: zeta must be a finite number >= 0, got {self.zeta!r}")

    def __call__(
        self,
        prior: Any,
        problem: Problem,
        generator: GeneratorLike = None,
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Run DPS and return one posterior sample per measurement (``[B, ...]``, detached).

        Args:
            prior: a :class:`reddiff.DiffusionPrior` (differentiable network).
            problem: the measurement, operator (any operator with a differentiable ``A``) and ``sigma_y``.
            generator: a ``torch.Generator``, one per sample, an integer seed, or None.
            callback: called with a :class:`StepInfo` (``x`` = ``x0_hat``) after every step.
        """
        op, y = problem.operator, problem.y
        if not callable(getattr(op, "A", None)):
            raise SolverError(f"DPS cannot use operator {type(op).__name__!r}: it does not provide A")
        gens = per_sample_generators(generator, problem.batch_size, y.device)
        x_T = randn_like_per_sample(torch.empty(problem.x_shape, dtype=y.dtype, device=y.device), gens)  # noqa: N806

        def update(x: torch.Tensor, t: int, a_t: float, a_prev: float):
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                # 1. Tweedie estimate, keeping the graph through the network
                eps, x0 = prior.predict(x_in, t)
                # 2. residual norm per sample, and its gradient w.r.t. x_t (not w.r.t. the network's weights)
                ax = op.A(x0)
                norm = (problem.noise.residual_norm(y, ax) if problem.noise is not None
                        else torch.linalg.vector_norm((y - ax).flatten(1), dim=1))
                (grad,) = torch.autograd.grad(norm.sum(), x_in)
            # 3. unconditional ancestral / DDIM step
            noise = randn_like_per_sample(x, gens) if ddim_sigma(a_t, a_prev, self.eta) > 0 else None
            x_prev = ddim_step(x0.detach(), eps.detach(), a_t, a_prev, self.eta, noise)
            # 4. measurement-consistency gradient step, zeta_t = zeta / ||y - A(x0_hat)||
            x_prev = x_prev - self.zeta * grad
            return x_prev, x0.detach(), {"residual": float(norm.detach().mean())}

        return sample_loop("DPS", prior, x_T, self.steps, update, callback, f"try a smaller zeta (now {self.zeta})")
