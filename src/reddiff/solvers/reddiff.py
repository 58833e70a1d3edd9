"""RED-diff: regularisation by denoising diffusion (Mardani et al., ICLR 2024, arXiv 2305.04391, Algorithm 1).

RED-diff fits a Dirac variational posterior ``q(x0 | y) = δ(x0 - mu)`` by stochastic optimisation of ``mu``:

    min_mu  obs_weight * ||y - A(mu)||^2 / 2  +  E_{t, eps}[ w_t (sg[eps_theta(x_t, t) - eps])^T mu ]

(paper eq. 9-10), with ``x_t = sqrt(abar_t) mu + sqrt(1 - abar_t) eps`` and the network behind a stop-gradient, so a
step costs one network forward and no backpropagation through the network.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SolverError
from ..schedule import TIMESTEP_ORDERS
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

__all__ = ["RedDiff", "WEIGHTINGS", "INITS", "DATA_TERMS", "weighting_fn", "resolve_optimizer"]

#: f(r) of the SNR-based weight ``w_t = lam * f(r)``, ``r = sqrt(1 - abar_t) / sqrt(abar_t)`` (inverse sqrt SNR).
WEIGHTINGS: dict[str, Any] = {
    "linear": lambda r: r,
    "sqrt": lambda r: math.sqrt(r),
    "square": lambda r: r * r,
    "log": lambda r: math.log1p(r),
    "trunc_linear": lambda r: min(r, 1.0),
    "power2over3": lambda r: r ** (2.0 / 3.0),
    "const": lambda r: 1.0,
}
INITS = ("pinv", "classical", "zeros", "random", "adjoint")
#: learning-rate schedules over the steps: factor of ``lr`` at progress ``p = i / steps``.
LR_SCHEDULES: dict[str, Any] = {
    "constant": lambda p: 1.0,
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
}
DATA_TERMS = ("mean", "paper")


def weighting_fn(name: str):
    """The weighting function ``f`` by name; an unknown name is an error listing the accepted ones."""
    try:
        return WEIGHTINGS[name]
    except KeyError:
        raise SolverError(f"unknown weighting {name!r}; accepted: {', '.join(WEIGHTINGS)}") from None


def resolve_optimizer(name: str) -> type[torch.optim.Optimizer]:
    """A ``torch.optim`` optimizer class by case-insensitive name (``adam``, ``sgd``, ``adamw``, ...)."""
    classes = {
        k.lower(): v
        for k, v in vars(torch.optim).items()
        if isinstance(v, type) and issubclass(v, torch.optim.Optimizer) and v is not torch.optim.Optimizer
    }
    try:
        return classes[name.lower()]
    except KeyError:
        raise SolverError(f"unknown optimizer {name!r}; accepted: {', '.join(sorted(classes))}") from None


@dataclass(frozen=True)
class RedDiff(SolverRecord):
    """RED-diff (Algorithm 1 of Mardani et al. 2024). The fields are the hyperparameters and the run record.

    Defaults follow the paper and its reference implementation: ``lam=0.25``, ``lr=0.1`` (the paper uses
    ``lr=0.5`` for inpainting and the nonlinear tasks, and ``lam=1.0, lr=0.25`` for noisy inpainting at
    ``sigma_y = 0.1``), 1000 descending steps, inverse-SNR (``linear``) weighting, Adam with betas (0.9, 0.99),
    initialised at ``A_dagger(y)``.

    Both loss terms are *means* over their elements by default (``data_term="mean"``, as in the reference
    implementation; the published ``lam``/``lr`` only carry over with it):
    ``loss = w_t * mean((eps_hat - eps) * mu) + obs_weight * mean((y - A(mu))^2) / 2``. Means are taken per
    sample and summed over the batch, so each sample's gradient (and, Adam being elementwise, its whole
    trajectory) is the one it would have alone. ``data_term="paper"`` uses the paper's sums with the likelihood
    scale: ``w_t * sum((eps_hat - eps) * mu) + obs_weight * ||y - A(mu)||^2 / (2 sigma_y^2)`` (needs
    ``sigma_y > 0``). With a noise model on the problem (``problem.noise``, e.g. Poisson), the data term is its
    ``nll`` (mean form) or ``nll_sum`` (paper form) instead.

    Args:
        steps: number of optimisation steps N (timesteps evenly spaced over 0..T-1).
        lr: optimizer learning rate.
        lam: λ, the regularisation strength.
        weighting: f in ``w_t = lam * f(sqrt(1 - abar_t)/sqrt(abar_t))``: one of :data:`WEIGHTINGS`.
        obs_weight: weight of the data-fidelity term.
        sigma_x0: standard deviation of a Gaussian variational posterior around ``mu`` (0: the Dirac of the
            paper); when > 0, ``x0 = mu + sigma_x0 * z`` is drawn afresh each step (reparameterised).
        init: initial ``mu``: ``pinv`` (the operator's ``initial_estimate(y)`` where it defines one: blurs use
            a pseudo-inverse truncated at 3e-2 of the largest singular value, nonlinear operators their own
            guess; otherwise ``A_dagger(y)``), ``classical`` (the operator's prior-free classical restoration where
            it has one: bicubic upsampling with back-projection for ``sr``, normalised-convolution filling for
            inpainting; otherwise as ``pinv``), ``zeros``, ``random`` (standard normal), ``adjoint`` (``A^T y``).
        order: timestep order: ``descending`` (paper's best), ``ascending`` or ``random``.
        order_seed: seed of the permutation when ``order="random"`` (the same order for every sample).
        lr_schedule: ``constant`` (the paper's), ``linear`` or ``cosine`` decay of ``lr`` to 0 over the steps. Adam
            normalises gradient magnitudes, so with a constant ``lr`` the estimate keeps moving by about ``lr`` per
            step even where the gradients have become small and noisy; a decay lets it settle.
        t_max: the largest timestep visited (default ``T - 1``, the paper's). A smaller value skips the noisiest
            timesteps, whose random regularisation gradients would scramble a good starting point (useful with
            ``init="classical"``).
        optimizer: a ``torch.optim`` optimizer name.
        betas: Adam-family betas.
        optimizer_kwargs: extra optimizer arguments (e.g. ``{"momentum": 0.9}`` for SGD).
        data_term: ``mean`` (reference normalisation, default) or ``paper``.
        clip_x0: clamp the returned estimate to the prior's ``data_range`` ([-1, 1] for images; nothing for priors
            without one). Off by default: the estimate is returned as optimised.
    """

    steps: int = 1000
    lr: float = 0.1
    lam: float = 0.25
    weighting: str = "linear"
    obs_weight: float = 1.0
    sigma_x0: float = 0.0
    init: str = "pinv"
    order: str = "descending"
    order_seed: int = 0
    t_max: int | None = None
    lr_schedule: str = "constant"
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.99)
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    data_term: str = "mean"
    clip_x0: bool = False

    name = "reddiff"

    def __post_init__(self) -> None:
        if int(self.steps) < 1:
            raise SolverError(f"steps must be >= 1, got {self.steps}")
        for what in ("lr",):
            value = getattr(self, what)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SolverError(f"{what} must be a finite number > 0, got {value}")
        for what in ("lam", "obs_weight", "sigma_x0"):
            value = getattr(self, what)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise SolverError(f"{what} must be a finite number >= 0, got {value}")
        weighting_fn(self.weighting)
        resolve_optimizer(self.optimizer)
        if self.init not in INITS:
            raise SolverError(f"unknown init {self.init!r}; accepted: {', '.join(INITS)}")
        if self.order not in TIMESTEP_ORDERS:
            raise SolverError(f"unknown timestep order {self.order!r}; accepted: {', '.join(TIMESTEP_ORDERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise SolverError(f"unknown lr_schedule {self.lr_schedule!r}; accepted: {', '.join(LR_SCHEDULES)}")
        if self.data_term not in DATA_TERMS:
            raise SolverError(f"unknown data_term {self.data_term!r}; accepted: {', '.join(DATA_TERMS)}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "optimizer_kwargs", dict(self.optimizer_kwargs))


    # -- pieces of Algorithm 1 -------------------------------------------------------------------------------
    def weight(self, abar_t: float) -> float:
        """``w_t = lam * f(sqrt(1 - abar_t) / sqrt(abar_t))``."""
        return self.lam * float(weighting_fn(self.weighting)(math.sqrt((1.0 - abar_t) / abar_t)))

    def initial_estimate(self, problem: Problem, generators: list[torch.Generator]) -> torch.Tensor:
        """The starting ``mu`` according to ``init``."""
        op, y = problem.operator, problem.y
        if self.init == "zeros":
            return torch.zeros(problem.x_shape, dtype=y.dtype, device=y.device)
        if self.init == "random":
            return randn_like_per_sample(torch.empty(problem.x_shape, dtype=y.dtype, device=y.device), generators)
        if self.init == "classical" and callable(getattr(op, "classical_estimate", None)):
            return op.classical_estimate(y)
        if self.init == "adjoint":
            if not callable(getattr(op, "A_adjoint", None)):
                raise SolverError(f"RED-diff init 'adjoint' needs a linear operator; {op.task!r} has no A_adjoint")
            return op.A_adjoint(y)
        for name in ("initial_estimate", "A_dagger"):
            fn = getattr(op, name, None)
            if callable(fn):
                return fn(y)
        raise SolverError(
            f"RED-diff init 'pinv' needs A_dagger or initial_estimate; operator {op.task!r} has neither "
            "(use init='zeros' or 'random')"
        )

    # -- Algorithm 1 ---------------------------------------------------------------------------------------------
    def __call__(
        self,
        prior: Any,
        problem: Problem,
        generator: GeneratorLike = None,
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Run RED-diff and return the estimate ``mu`` (``[B, ...]``, detached).

        Args:
            prior: a :class:`reddiff.DiffusionPrior`.
            problem: the measurement, operator and ``sigma_y``.
            generator: randomness: a ``torch.Generator``, one per sample (batch-independent results), an integer seed,
                or None.
            callback: called with a :class:`StepInfo` after every step.

        Raises:
            SolverError: on bad settings, an operator without what ``init`` needs, or a NaN/Inf loss or estimate.
        """
        noise = problem.noise
        if self.data_term == "paper" and noise is None and problem.sigma_y <= 0:
            raise SolverError("data_term='paper' divides by sigma_y^2 and needs sigma_y > 0")
        op, y = problem.operator, problem.y
        batch = problem.batch_size
        gens = per_sample_generators(generator, batch, y.device)
        timesteps = prior.schedule.timesteps(
            self.steps, self.order, torch.Generator().manual_seed(self.order_seed), t_max=self.t_max,
            allow_repeats=self.t_max is not None,
        )
        abar = prior.schedule.abar  # float64 on the CPU: exact weights

        with torch.no_grad():
            mu0 = self.initial_estimate(problem, gens).detach().clone()
        check_finite("RED-diff", 0, int(timesteps[0]), mu0, "initial estimate", "check the measurement")
        mu = torch.nn.Parameter(mu0)
        opt_cls = resolve_optimizer(self.optimizer)
        kwargs = dict(self.optimizer_kwargs)
        if "betas" in inspect.signature(opt_cls).parameters:
            kwargs.setdefault("betas", self.betas)
        optimizer = opt_cls([mu], lr=self.lr, **kwargs)

        reduce_dims = tuple(range(1, y.dim()))
        x_dims = tuple(range(1, mu.dim()))
        hint = f"try a smaller lr (now {self.lr})"

        for i, t in enumerate(timesteps.tolist()):
            # 1. x0 ~ q(x0 | y): mu itself (Dirac), or mu + sigma_x0 z
            x0 = mu
            if self.sigma_x0 > 0:
                x0 = mu + self.sigma_x0 * randn_like_per_sample(mu, gens)
            # 2. diffuse: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, fresh eps per sample
            eps = randn_like_per_sample(mu, gens)
            a_t = float(abar[t])
            with torch.no_grad():
                x_t = math.sqrt(a_t) * x0.detach() + math.sqrt(1.0 - a_t) * eps
                # 3. denoise, no gradient through the network (stop-gradient)
                eps_hat = prior.eps(x_t, t)
            # 4. SNR-based weight
            w_t = self.weight(a_t)
            # 5. loss = w_t * <sg(eps_hat - eps), x0> + obs_weight * data fidelity
            ax = op.A(x0)
            score_term = (eps_hat - eps).detach() * x0
            if self.data_term == "mean":
                reg = score_term.mean(dim=x_dims)
                obs = noise.nll(y, ax) if noise is not None else 0.5 * (y - ax).pow(2).mean(dim=reduce_dims)
            else:
                reg = score_term.sum(dim=x_dims)
                obs = (noise.nll_sum(y, ax) if noise is not None
                       else (y - ax).pow(2).sum(dim=reduce_dims) / (2.0 * problem.sigma_y**2))
            loss = (w_t * reg + self.obs_weight * obs).sum()
            # a non-finite mu from the previous step shows up here too, so the loop checks only the loss
            check_finite("RED-diff", i, t, loss.detach(), "loss", hint)
            # 6. one optimizer step on mu
            for group in optimizer.param_groups:
                group["lr"] = self.lr * LR_SCHEDULES[self.lr_schedule](i / self.steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if callback is not None:
                callback(
                    StepInfo(
                        step=i,
                        num_steps=self.steps,
                        t=int(t),
                        x=mu.detach(),
                        losses={
                            "loss": float(loss.detach()),
                            "reg": float(reg.detach().sum()),
                            "obs": float(obs.detach().sum()),
                            "weight": w_t,
                        },
                    )
                )
        out = mu.detach()
        check_finite("RED-diff", self.steps - 1, int(timesteps[-1]), out, "estimate", hint)
        bounds = getattr(prior, "data_range", None)
        return out.clamp(*bounds) if self.clip_x0 and bounds is not None else out
