"""ΠGDM: pseudoinverse-guided diffusion models (Song, Vahdat, Mardani & Kautz, ICLR 2023).

ΠGDM approximates ``p(x0 | x_t)`` by ``N(x0_hat, r_t^2 I)`` (eq. 5), which makes ``p(y | x_t)`` Gaussian and gives
the guidance (eq. 8, the noisy form)

    g = ( (y - A x0_hat)^T (r_t^2 A A^T + sigma_y^2 I)^{-1} A  d x0_hat / d x_t )^T ,

a vector-Jacobian product through the network. ``r_t^2 = sigma_t^2 / (1 + sigma_t^2)`` in the paper's VE units is
``r_t^2 = 1 - abar_t`` in VP units (exact for a standard normal prior). For ``sigma_y = 0`` the inverse is the
pseudo-inverse and ``A^T (r_t^2 A A^T)^+ = A^+ / r_t^2``: the noiseless form (eq. 7, ``(A^+ y - A^+ A x0_hat)^T
d x0_hat / d x_t``) up to the factor ``1 / r_t^2``, which the paper folds into its guidance weight. Here both are
the same formula with the exact likelihood scale.

``g`` approximates ``grad_{x_t} log p(y | x_t)``; we add it to the score, i.e. use
``eps' = eps_hat - sqrt(1 - abar_t) g`` and ``x0' = x0_hat + (1 - abar_t) / sqrt(abar_t) g`` in the DDIM step
(Algorithm 1 of the paper, with the guidance weight of the exact posterior score).

Clipping: ``E[x0 | x_t]`` lies in the data's range, so by default ``x0_hat`` is clipped to the prior's
``data_range`` (images: [-1, 1]; none for unbounded priors such as :class:`reddiff.GaussianMixturePrior`) and
``eps_hat`` is recomputed from the clipped ``x0_hat``, as ADM's sampler does; the vector-Jacobian product goes
through the clip. Without it a small learned prior diverges at high noise: its ``d x0_hat / d x_t`` reaches
``1 / sqrt(abar_t)`` (about 160 at t = 999) along smooth directions, far above the exact posterior's, and the
guidance feeds that error back every step (measured on the bundled prior; see ``clip_x0``).

The matrix inverse is closed form in the SVD space for SVD-structured operators
(``A^T (r^2 A A^T + s_y^2)^{-1} = V diag(s / (r^2 s^2 + s_y^2)) U^T``) and conjugate gradients otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..operators.base import LinearOperator, SVDOperator, conjugate_gradient
from ..params import Range, hyper
from .base import SampleContext, Sampler
from .ddim import ETA_HELP, STEPS, UNIT, spacing_field

__all__ = ["PiGDM", "pigdm_guidance_vector"]


def pigdm_guidance_vector(
    op: LinearOperator, y: torch.Tensor, x0_hat: torch.Tensor, r2: float, sigma_y: float, cg_iters: int = 100,
    cg_tol: float = 1e-8,
) -> torch.Tensor:
    """``A^T (r^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)``, shaped like ``x0_hat`` (pseudo-inverse if singular).

    Args:
        op: a linear operator; closed form when it is an :class:`SVDOperator`.
        y: measurement ``[B, *y_shape]``.
        x0_hat: the current clean estimate ``[B, *x_shape]``.
        r2: ``r_t^2``.
        sigma_y: measurement noise standard deviation.
        cg_iters: conjugate-gradient iterations for operators without SVD.
        cg_tol: conjugate-gradient relative tolerance.
    """
    resid = y - op.A(x0_hat)
    if isinstance(op, SVDOperator):
        s = op.singulars().to(device=y.device, dtype=y.dtype)
        denom = r2 * s * s + sigma_y**2
        pos = denom > 0
        scale = torch.where(pos, s / torch.where(pos, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        coef = scale * op.Ut(resid)
        n = math.prod(x0_hat.shape[1:])
        coef = torch.cat([coef, coef.new_zeros(coef.shape[0], n - coef.shape[1])], dim=1)
        return op.V(coef).reshape(x0_hat.shape)
    z = conjugate_gradient(lambda v: r2 * op.A(op.A_adjoint(v)) + sigma_y**2 * v, resid, iters=cg_iters, tol=cg_tol)
    return op.A_adjoint(z)


@dataclass(frozen=True)
class PiGDM(Sampler):
    """ΠGDM (Song et al. 2023, Algorithm 1), noiseless and noisy forms, for linear operators.

    Defaults: 100 steps (as in the paper's and RED-diff's comparisons), ``eta = 1.0`` (the stochastic DDIM update
    used in ΠGDM's experiments), guidance scale 1 (the exact ``grad log p(y | x_t)`` under the ΠGDM Gaussian
    approximation), ``r_t^2 = 1 - abar_t``.
    """

    steps: int = hyper(100, "number of reverse steps", range=STEPS)
    eta: float = hyper(1.0, ETA_HELP, range=UNIT)
    timestep_spacing: str = spacing_field()
    guidance_scale: float = hyper(1.0, "multiplies the guidance g; 1 is the exact ΠGDM likelihood score")
    clip_x0: bool = hyper(True, "clip x0_hat to the prior's data range ([-1, 1] for images) before the guidance and "
                          "the step; keeps small priors from diverging at high noise")
    cg_iters: int = hyper(100, "conjugate-gradient iterations for linear operators without an SVD",
                          range=Range(low=1, integer=True))
    cg_tol: float = hyper(1e-8, "conjugate-gradient relative residual tolerance", range=Range(low=0.0, low_open=True))

    name = "pigdm"
    label = "ΠGDM"
    # with the bundled prior on 48 px training crops, 10 steps returned unrelated images on 3 of 9 problems
    # (3-10 dB, residual 1.2-3.2x the measurement's size), 20 gave 14-25 dB (benchmarks/results/few_steps.json)
    min_steps = 20
    requires = (LinearOperator,)
    hint = "try a smaller guidance_scale"

    def prepare(self, ctx: SampleContext) -> Any:
        return ctx.prior.data_range if self.clip_x0 else None

    def step(self, ctx: SampleContext, x: torch.Tensor, t: int | float, a_t: float, a_prev: float):
        problem, bounds = ctx.problem, ctx.state
        r2 = 1.0 - a_t
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            # 1. Tweedie estimate with the graph through the network (clipped to the data range)
            eps, x0 = ctx.prior.predict(x_in, t)
            if bounds is not None:
                x0 = x0.clamp(*bounds)
                eps = (x_in - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)
            # 2. v = A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)
            with torch.no_grad():
                v = pigdm_guidance_vector(problem.operator, problem.y, x0.detach(), r2, problem.sigma_y,
                                          self.cg_iters, self.cg_tol)
            # 3. g = (d x0_hat / d x_t)^T v, a vector-Jacobian product
            (g,) = torch.autograd.grad(x0, x_in, grad_outputs=v)
        g = self.guidance_scale * g
        # 4. guided score -> guided (eps, x0), then the DDIM step
        eps_g = eps.detach() - math.sqrt(1.0 - a_t) * g
        x0_g = x0.detach() + (1.0 - a_t) / math.sqrt(a_t) * g
        x_prev = self.ddim_update(ctx, x0_g, eps_g, a_t, a_prev)
        return x_prev, x0.detach(), {"guidance_norm": float(g.flatten(1).norm(dim=1).mean())}
