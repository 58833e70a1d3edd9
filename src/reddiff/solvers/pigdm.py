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

from ..errors import SolverError
from ..operators.base import conjugate_gradient
from .base import (
    Callback,
    GeneratorLike,
    Problem,
    SolverRecord,
    per_sample_generators,
    randn_like_per_sample,
    require_capabilities,
)
from .ddim import check_steps, check_unit, ddim_sigma, ddim_step, sample_loop

__all__ = ["PiGDM", "pigdm_guidance_vector"]

_SVD = ("singulars", "Vt", "V", "Ut", "U")


def _has_svd(op: Any) -> bool:
    return all(callable(getattr(op, name, None)) for name in _SVD)


def pigdm_guidance_vector(
    op: Any, y: torch.Tensor, x0_hat: torch.Tensor, r2: float, sigma_y: float, cg_iters: int = 100, cg_tol: float = 1e-8
) -> torch.Tensor:
    """``A^T (r^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)``, shaped like ``x0_hat`` (pseudo-inverse if singular).

    Args:
        op: a linear operator (``A``, ``A_adjoint``); closed form when it also has the SVD methods.
        y: measurement ``[B, *y_shape]``.
        x0_hat: the current clean estimate ``[B, *x_shape]``.
        r2: ``r_t^2``.
        sigma_y: measurement noise standard deviation.
        cg_iters: conjugate-gradient iterations for operators without SVD.
        cg_tol: conjugate-gradient relative tolerance.
    """
    resid = y - op.A(x0_hat)
    if _has_svd(op):
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
class PiGDM(SolverRecord):
    """ΠGDM (Song et al. 2023, Algorithm 1), noiseless and noisy forms, for linear operators.

    Defaults: 100 steps (as in the paper's and RED-diff's comparisons), ``eta = 1.0`` (the stochastic DDIM update
    used in ΠGDM's experiments), guidance scale 1 (the exact ``grad log p(y | x_t)`` under the ΠGDM Gaussian
    approximation), ``r_t^2 = 1 - abar_t``.

    Args:
        steps: number of reverse steps.
        eta: η of the DDIM update.
        guidance_scale: multiplies the guidance ``g``.
        clip_x0: clip ``x0_hat`` to ``prior.data_range`` before the guidance and the step (no effect on priors
            without a data range).
        cg_iters: conjugate-gradient iterations for linear operators without an SVD.
        cg_tol: conjugate-gradient relative residual tolerance.
    """

    steps: int = 100
    eta: float = 1.0
    guidance_scale: float = 1.0
    clip_x0: bool = True
    cg_iters: int = 100
    cg_tol: float = 1e-8

    name = "pigdm"

    def __post_init__(self) -> None:
        check_steps("ΠGDM", self.steps)
        check_unit("ΠGDM", "eta", self.eta)
        if not (isinstance(self.guidance_scale, int | float) and math.isfinite(self.guidance_scale)):
            raise SolverError(f"ΠGDM: guidance_scale must be a finite number, got {self.guidance_scale!r}")
        if int(self.cg_iters) < 1 or not self.cg_tol > 0:
            raise SolverError(f"ΠGDM: need cg_iters >= 1 and cg_tol > 0, got {self.cg_iters}, {self.cg_tol}")

    def __call__(
        self,
        prior: Any,
        problem: Problem,
        generator: GeneratorLike = None,
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Run ΠGDM and return one posterior sample per measurement (``[B, ...]``, detached).

        Args:
            prior: a :class:`reddiff.DiffusionPrior` (differentiable network).
            problem: the measurement, a linear operator (``A_adjoint``) and ``sigma_y``.
            generator: a ``torch.Generator``, one per sample, an integer seed, or None.
            callback: called with a :class:`StepInfo` (``x`` = the unguided ``x0_hat``) after every step.

        Raises:
            SolverError: the operator is not linear (no ``A_adjoint``), or the sample diverged.
        """
        op, y, sigma_y = problem.operator, problem.y, problem.sigma_y
        require_capabilities("ΠGDM", op, ("A", "A_adjoint"))
        gens = per_sample_generators(generator, problem.batch_size, y.device)
        x_T = randn_like_per_sample(torch.empty(problem.x_shape, dtype=y.dtype, device=y.device), gens)  # noqa: N806

        bounds = getattr(prior, "data_range", None) if self.clip_x0 else None

        def update(x: torch.Tensor, t: int, a_t: float, a_prev: float):
            r2 = 1.0 - a_t
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                # 1. Tweedie estimate with the graph through the network (clipped to the data range)
                eps, x0 = prior.predict(x_in, t)
                if bounds is not None:
                    x0 = x0.clamp(*bounds)
                    eps = (x_in - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)
                # 2. v = A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)
                with torch.no_grad():
                    v = pigdm_guidance_vector(op, y, x0.detach(), r2, sigma_y, int(self.cg_iters), self.cg_tol)
                # 3. g = (d x0_hat / d x_t)^T v, a vector-Jacobian product
                (g,) = torch.autograd.grad(x0, x_in, grad_outputs=v)
            g = self.guidance_scale * g
            # 4. guided score -> guided (eps, x0), then the DDIM step
            eps_g = eps.detach() - math.sqrt(1.0 - a_t) * g
            x0_g = x0.detach() + (1.0 - a_t) / math.sqrt(a_t) * g
            noise = randn_like_per_sample(x, gens) if ddim_sigma(a_t, a_prev, self.eta) > 0 else None
            x_prev = ddim_step(x0_g, eps_g, a_t, a_prev, self.eta, noise)
            return x_prev, x0.detach(), {"guidance_norm": float(g.flatten(1).norm(dim=1).mean())}

        return sample_loop("ΠGDM", prior, x_T, self.steps, update, callback, "try a smaller guidance_scale")
