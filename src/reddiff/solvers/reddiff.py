"""RED-diff: regularisation by denoising diffusion (Mardani et al., ICLR 2024, arXiv 2305.04391, Algorithm 1).

RED-diff fits a Dirac variational posterior ``q(x0 | y) = δ(x0 - mu)`` by stochastic optimisation of ``mu``:

    min_mu  obs_weight * ||y - A(mu)||^2 / 2  +  E_{t, eps}[ w_t (sg[eps_theta(x_t, t) - eps])^T mu ]

(paper eq. 9-10), with ``x_t = sqrt(abar_t) mu + sqrt(1 - abar_t) eps`` and the network behind a stop-gradient, so a
step costs one network forward and no backpropagation through the network.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import SolverError
from ..noise import Robust, robust_noise
from ..operators.base import LinearOperator
from ..params import Range, hyper
from ..schedule import TIMESTEP_ORDERS
from .base import (
    Callback,
    GeneratorLike,
    Problem,
    Solver,
    StepInfo,
    check_finite,
    check_robust,
    per_sample_generators,
    randn_like_per_sample,
    robust_field,
    step_context,
)
from .ddim import spacing_field

if TYPE_CHECKING:  # pragma: no cover
    from ..prior import DiffusionPrior

__all__ = ["RedDiff", "WEIGHTINGS", "INITS", "LR_SCHEDULES", "DATA_TERMS", "RETURNS", "LATENT_MODES", "OPTIMIZERS",
           "PROFILES", "repulsion_drift", "unpinned", "weighting_fn", "resolve_optimizer"]

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
DATA_TERMS = ("mean", "paper", "reference")
#: what RED-diff returns: the estimate after the last update (Algorithm 1), or the x0 of the last step before it.
RETURNS = ("mu", "last_x0")
#: how RED-diff uses a latent prior (see :mod:`reddiff.solvers.latent`).
LATENT_MODES = ("split", "direct")
#: named settings of RED-diff (``--profile``; fields given explicitly go on top). ``paper``: the paper's
#: hyperparameters and Algorithm 1 as written (the field defaults). ``reference``: the same hyperparameters with the
#: conventions of the official code (github.com/NVlabs/RED-diff), so that its numbers can be reproduced: its timestep
#: grid ``range(0, T, T // N)`` (``stride``), its return value (the last step's x0, taken before the last Adam
#: update) and its inpainting data term (the mean over the whole masked image). One convention is kept: the official
#: code averages both loss terms over the whole batch, so a sample's result depends on the batch it ran in; here each
#: sample's terms are averaged over that sample only (Adam is invariant to the 1/B scale that separates the two,
#: apart from its ε), so results never depend on the batch.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {},
    "reference": {"timestep_spacing": "stride", "returns": "last_x0", "data_term": "reference", "init": "pinv"},
}
#: ``torch.optim`` optimizers that step a dense tensor without a closure, by lower-case name.
OPTIMIZERS = tuple(name for name in ("adam", "adamw", "adamax", "nadam", "radam", "sgd", "rmsprop", "adagrad",
                                     "adadelta", "adafactor", "asgd", "rprop")
                   if any(k.lower() == name for k in vars(torch.optim)))
#: optimizers refused by name, and why.
_REFUSED = {"lbfgs": "it needs a closure that re-evaluates the loss, which RED-diff's stochastic loss cannot give",
            "sparseadam": "it needs sparse gradients", "muon": "it only takes 2-D (matrix) parameters"}


def weighting_fn(name: str):
    """The weighting function ``f`` by name; an unknown name is an error listing the accepted ones."""
    try:
        return WEIGHTINGS[name]
    except KeyError:
        raise SolverError(f"unknown weighting {name!r}; accepted: {', '.join(WEIGHTINGS)}") from None


def resolve_optimizer(name: str) -> type[torch.optim.Optimizer]:
    """A ``torch.optim`` optimizer class among :data:`OPTIMIZERS` by case-insensitive name."""
    key = str(name).lower()
    if key in _REFUSED:
        raise SolverError(f"RED-diff cannot use optimizer {name!r}: {_REFUSED[key]}; accepted: {', '.join(OPTIMIZERS)}")
    if key not in OPTIMIZERS:
        raise SolverError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")
    return next(v for k, v in vars(torch.optim).items() if k.lower() == key)


def unpinned(op: Any, x: torch.Tensor) -> torch.Tensor:
    """The part of ``x`` a linear measurement does not determine, ``(I - A^+ A) x`` (inpainting: the missing
    pixels; block averaging: the detail within each block); all of ``x`` for a nonlinear operator. Samples of one
    measurement should differ there: pushed apart where the data pins them, they would only leave the data."""
    if not isinstance(op, LinearOperator):
        return x
    return x - op.A_dagger(op.A(x))


def repulsion_drift(x: torch.Tensor, groups: Sequence[int], min_bandwidth: float = 0.0) -> torch.Tensor:
    """The direction that pushes each sample away from the other members of its group: the repulsive term of Stein
    variational gradient descent (Liu & Wang 2016), ``drift_i = 2 / (h (n - 1)) sum_j k_ij (x_i - x_j)`` with the
    Gaussian kernel ``k_ij = exp(-d_ij / h)`` on ``d_ij``, the mean squared difference of samples ``i`` and ``j``,
    and the median rule ``h = median(d) / log n`` for a group of ``n`` (at least ``min_bandwidth``). It is minus
    the gradient of ``sum_j exp(-d_ij / h) / (n - 1)`` times the number of entries, so it is measured in the data's
    own units: for samples ``sqrt(h / 2)`` apart (the strongest push) about ``0.86 / sqrt(h)`` per entry. Samples
    alone in their group get 0.

    Args:
        x: the samples, ``[B, ...]``.
        groups: the group of each sample (length ``B``).
        min_bandwidth: the least ``h``: bounds the push between samples that are still nearly equal.

    Returns:
        ``[B, ...]`` like ``x``.
    """
    flat = x.detach().flatten(1)
    out = torch.zeros_like(flat)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(int(g), []).append(i)
    for idx in members.values():
        n = len(idx)
        if n < 2:
            continue
        pts = flat[idx]
        diff = pts[:, None, :] - pts[None, :, :]  # [n, n, D]: x_i - x_j
        d = diff.pow(2).mean(dim=-1)
        off = ~torch.eye(n, dtype=torch.bool, device=flat.device)
        h = (d[off].median() / math.log(n)).clamp_min(max(min_bandwidth, 1e-12))
        k = torch.exp(-d / h) * off
        out[idx] = 2.0 / (h * (n - 1)) * (k[..., None] * diff).sum(dim=1)
    return out.reshape(x.shape)


@dataclass(frozen=True)
class RedDiff(Solver):
    """RED-diff (Algorithm 1 of Mardani et al. 2024). The fields are the hyperparameters and the run record.

    Defaults follow the paper and its reference implementation: ``lam=0.25``, ``lr=0.1`` (the paper uses
    ``lr=0.5`` for inpainting and the nonlinear tasks, and ``lam=1.0, lr=0.25`` for noisy inpainting at
    ``sigma_y = 0.1``), 1000 descending steps, inverse-SNR (``linear``) weighting, Adam with betas (0.9, 0.99),
    initialised at ``A_dagger(y)``. :meth:`from_preset` gives a prior's tuned settings for a task instead.

    Both loss terms are *means* over their elements by default (``data_term="mean"``, as in the reference
    implementation; the published ``lam``/``lr`` only carry over with it):
    ``loss = w_t * mean((eps_hat - eps) * mu) + obs_weight * nll(y, A(mu))`` where ``nll`` is the problem's noise
    model in the mean normalisation (Gaussian: ``mean((y - A(mu))^2) / 2``). Means are taken per sample and summed
    over the batch, so each sample's gradient (and, Adam being elementwise, its whole trajectory) is the one it would
    have alone. ``data_term="paper"`` uses the paper's sums with the likelihood scale:
    ``w_t * sum((eps_hat - eps) * mu) + obs_weight * nll_sum(y, A(mu))`` (Gaussian:
    ``||y - A(mu)||^2 / (2 sigma_y^2)``, which needs ``sigma_y > 0``).

    ``init``: ``pinv`` starts from the operator's :meth:`~reddiff.operators.Operator.inverse_estimate` (its own
    initial estimate where it has one: blurs a pseudo-inverse truncated at 3e-2 of the largest singular value,
    nonlinear operators their own guess; otherwise ``A_dagger(y)``); ``classical`` from its
    :meth:`~reddiff.operators.Operator.classical_estimate` (bicubic upsampling with back-projection for ``sr``,
    normalised-convolution filling for inpainting; otherwise as ``pinv``); ``zeros``; ``random`` (standard normal);
    ``adjoint`` (``A^T y``, linear operators).
    """

    steps: int = hyper(1000, "number of optimisation steps N (timesteps evenly spaced over 0..t_max)",
                       range=Range(low=1, integer=True))
    lr: float = hyper(0.1, "optimizer learning rate", range=Range(low=0.0, low_open=True))
    lam: float = hyper(0.25, "λ, the regularisation strength", range=Range(low=0.0))
    weighting: str = hyper("linear", "f in w_t = λ f(σ_t/α_t): linear = inverse square-root SNR (the paper's best)",
                           choices=tuple(WEIGHTINGS))
    obs_weight: float = hyper(1.0, "weight of the data-fidelity term", range=Range(low=0.0))
    sigma_x0: float = hyper(0.0, "std of a Gaussian variational posterior around mu (0: the paper's Dirac); "
                            "x0 = mu + sigma_x0 z is drawn afresh each step", range=Range(low=0.0))
    init: str = hyper("pinv", "initial mu: pinv = the operator's own rough inverse, else A_dagger(y); classical = "
                      "its prior-free classical restoration, else as pinv; adjoint = A^T y", choices=INITS)
    order: str = hyper("descending", "timestep order (descending is the paper's best)", choices=TIMESTEP_ORDERS)
    order_seed: int = hyper(0, "seed of the permutation when order is random (the same order for every sample)",
                            range=Range(low=0, integer=True))
    t_max: float | None = hyper(None, "the largest timestep visited, in the schedule's time (none: the top, T-1 for "
                                "the paper's); a smaller value skips the noisiest timesteps", range=Range(low=0))
    timestep_spacing: str = spacing_field()
    lr_schedule: str = hyper("constant", "decay of lr over the steps (constant is the paper's)",
                             choices=tuple(LR_SCHEDULES))
    optimizer: str = hyper("adam", "torch.optim optimizer", choices=OPTIMIZERS)
    betas: tuple[float, float] = hyper((0.9, 0.99), "Adam-family betas")
    optimizer_kwargs: Mapping[str, Any] = hyper({}, "extra optimizer arguments, e.g. {\"momentum\": 0.9} for sgd")
    data_term: str = hyper("mean", "mean (both terms averaged, the reference normalisation), paper (the "
                           "likelihood's sums, ||y - A(mu)||^2 / (2 sigma_y^2)) or reference (as mean, but "
                           "inpainting's residual averaged over the whole masked image, as the official code does)",
                           choices=DATA_TERMS)
    returns: str = hyper("mu", "what is returned: mu (the estimate after the last update, Algorithm 1) or last_x0 "
                        "(the last step's x0, before its update: the official code's return)", choices=RETURNS)
    clip_x0: bool = hyper(False, "clamp the returned estimate to the prior's data range ([-1, 1] for images)")
    robust: str = robust_field()
    repulsion: float = hyper(0.0, "γ, repulsion among the samples of one measurement (--num-samples): after each "
                             "optimizer step every sample moves by γ · lr times the SVGD repulsive drift away from "
                             "the others, in the part of the image the data leaves free; 0: independent samples",
                             range=Range(low=0.0))
    repulsion_bandwidth: float = hyper(0.01, "the least kernel bandwidth h of the repulsion, a mean squared "
                                       "difference in the data's units (0.01: 0.1 RMS on [-1, 1] images); bounds "
                                       "the push between samples that are still nearly equal",
                                       range=Range(low=0.0))
    latent_mode: str = hyper("split", "latent priors only: split (a pixel variable x and the latent z coupled by "
                             "rho/2 ||x - D(z)||^2; the data term acts on x alone, exactly solved for SVD operators "
                             "with Gaussian noise) or direct (the data term on D(z), through the decoder)",
                             choices=LATENT_MODES)
    rho: float = hyper(0.1, "latent priors, split form: weight of the coupling rho/2 ||x - D(z)||^2 (means, as the "
                       "data term's)", range=Range(low=0.0, low_open=True))
    pixel_lr: float | None = hyper(None, "latent priors, split form: learning rate of the pixel variable's step "
                                   "where it is not solved exactly (none: lr)", range=Range(low=0.0, low_open=True))

    name = "reddiff"
    label = "RED-diff"
    latent_capable = True

    def normalize(self) -> None:
        check_robust(self)
        if isinstance(self.optimizer, str):
            resolve_optimizer(self.optimizer)
            object.__setattr__(self, "optimizer", self.optimizer.lower())

    @classmethod
    def from_preset(cls, prior: DiffusionPrior, task: str, sigma_y: float = 0.0, **overrides: Any) -> RedDiff:
        """RED-diff with the prior's preset for ``task`` at noise ``sigma_y`` ([-1, 1] units), ``overrides`` on top.

        Tasks without a preset for this prior (see ``reddiff list priors``) get the paper's defaults; overrides
        whose value is None are ignored.

        Example:
            ``RedDiff.from_preset(prior, "inpaint-box", 0.05, steps=50)``
        """
        from ..tools.presets import preset_for_prior

        preset = preset_for_prior(prior, task, sigma_y)
        return cls(**{**preset, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> RedDiff:
        """RED-diff with the named settings of :data:`PROFILES` (``paper`` or ``reference``), ``overrides`` on top.

        Example:
            ``RedDiff.profile("reference", steps=100)`` runs as the official code would with 100 steps.
        """
        key = str(name).lower()
        if key not in PROFILES:
            raise SolverError(f"unknown RED-diff profile {name!r}; accepted: {', '.join(PROFILES)}")
        return cls(**{**PROFILES[key], **{k: v for k, v in overrides.items() if v is not None}})

    # -- pieces of Algorithm 1 -------------------------------------------------------------------------------
    def weight(self, abar_t: float) -> float:
        """``w_t = lam * f(sqrt(1 - abar_t) / sqrt(abar_t))``."""
        return self.lam * float(weighting_fn(self.weighting)(math.sqrt((1.0 - abar_t) / abar_t)))

    def initial_estimate(self, problem: Problem, generators: list[torch.Generator]) -> torch.Tensor:
        """The starting ``mu`` according to ``init``."""
        return self.start(problem, generators)[0]

    def start(self, problem: Problem, generators: list[torch.Generator]) -> tuple[torch.Tensor, str | None]:
        """The starting ``mu`` according to ``init``, and a one-line note when RED-diff chose the start itself: an
        operator with neither ``A_dagger`` nor an estimate of its own starts from its
        :meth:`~reddiff.operators.Operator.fallback_estimate`; with a robust data term, the ``pinv`` and
        ``classical`` starts are computed from the despeckled measurement when it is a picture."""
        op, y = problem.operator, problem.y
        if self.init == "zeros":
            return torch.zeros(problem.x_shape, dtype=y.dtype, device=y.device), None
        if self.init == "random":
            empty = torch.empty(problem.x_shape, dtype=y.dtype, device=y.device)
            return randn_like_per_sample(empty, generators), None
        if self.init == "adjoint":
            if not isinstance(op, LinearOperator):
                raise SolverError(f"RED-diff init 'adjoint' needs a linear operator; {op.task!r} is not linear")
            return op.A_adjoint(y), None
        notes = []
        noise = robust_noise(self.robust, problem.noise)
        if isinstance(noise, Robust) and op.measurement_is_image:  # a start the expected outliers do not spoil
            y, replaced = noise.despeckle(y)
            notes.append(f"robust data term: RED-diff starts from the measurement with {replaced} entries that stood "
                         "out from their 3x3 neighbourhood by more than delta replaced by its median")
        est = op.classical_estimate(y) if self.init == "classical" else None
        if est is None:
            est = op.inverse_estimate(y)
        if est is None:
            est, what = op.fallback_estimate(y)
            notes.append(f"operator {op.task!r} has no A_dagger or initial_estimate: RED-diff starts from {what} "
                         "(--init zeros or --init random chooses another start)")
        return est, "; ".join(notes) or None

    def grid(self, prior: DiffusionPrior) -> torch.Tensor:
        """The timesteps visited, in the order of ``order``."""
        return prior.schedule.timesteps(
            self.steps, self.order, torch.Generator().manual_seed(self.order_seed), t_max=self.t_max,
            allow_repeats=self.t_max is not None, spacing=self.timestep_spacing,
        )

    def make_optimizer(self, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        """The ``optimizer`` over ``params`` with ``lr``, ``betas`` and ``optimizer_kwargs``."""
        opt_cls = resolve_optimizer(self.optimizer)
        kwargs = dict(self.optimizer_kwargs)
        if "betas" in inspect.signature(opt_cls).parameters:
            kwargs.setdefault("betas", self.betas)
        return opt_cls(params, lr=lr, **kwargs)

    def data_noise(self, problem: Problem) -> Any:
        """The noise model whose likelihood is the data term (the problem's, made robust by ``robust``)."""
        noise = robust_noise(self.robust, problem.noise)
        if self.data_term == "paper" and noise.sigma_y <= 0:
            raise SolverError("data_term='paper' divides by sigma_y^2 and needs sigma_y > 0")
        return noise

    def obs_scale(self, problem: Problem) -> float:
        """The factor of the data term: with ``data_term="reference"`` and an inpainting operator the observed share
        of the pixels (the official code's term is a mean over the whole masked image), else 1."""
        op, y = problem.operator, problem.y
        return (math.prod(y.shape[1:]) / math.prod(problem.x_shape[1:])
                if self.data_term == "reference" and op.masks_image else 1.0)

    # -- Algorithm 1 ---------------------------------------------------------------------------------------------
    def __call__(self, prior: DiffusionPrior, problem: Problem, generator: GeneratorLike = None,
                 callback: Callback | None = None) -> torch.Tensor:
        """Run RED-diff and return the estimate ``mu`` (see :meth:`Solver.__call__`; with a latent prior see
        :mod:`reddiff.solvers.latent`)."""
        from ..latent import LatentPrior

        if isinstance(prior, LatentPrior):
            from .latent import latent_reddiff

            return latent_reddiff(self, prior, problem, generator, callback)
        noise = self.data_noise(problem)
        op, y = problem.operator, problem.y
        gens = per_sample_generators(generator, problem.batch_size, y.device)
        schedule = prior.schedule
        timesteps = self.grid(prior)

        with torch.no_grad(), step_context(self.label, -1, self.steps, timesteps[0].item()):
            mu0, note = self.start(problem, gens)
            mu0 = mu0.detach().clone()
        check_finite(self.label, 0, timesteps[0].item(), mu0, "initial estimate", "check the measurement")
        mu = torch.nn.Parameter(mu0)
        optimizer = self.make_optimizer([mu], self.lr)

        x_dims = tuple(range(1, mu.dim()))
        hint = f"try a smaller lr (now {self.lr})"
        n_steps = len(timesteps)  # the steps asked for, except with the stride grid
        last_x0 = mu0
        obs_scale = self.obs_scale(problem)

        for i, t in enumerate(timesteps.tolist()):
            with step_context(self.label, i, n_steps, t):
                # 1. x0 ~ q(x0 | y): mu itself (Dirac), or mu + sigma_x0 z
                x0 = mu
                if self.sigma_x0 > 0:
                    x0 = mu + self.sigma_x0 * randn_like_per_sample(mu, gens)
                # 2. diffuse: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, fresh eps per sample
                eps = randn_like_per_sample(mu, gens)
                a_t = schedule.abar_of(t)  # VP-equivalent, float64: exact weights
                with torch.no_grad():
                    x_t = math.sqrt(a_t) * x0.detach() + math.sqrt(1.0 - a_t) * eps
                    # 3. denoise, no gradient through the network (stop-gradient)
                    eps_hat = prior.eps(x_t, t)
                # 4. SNR-based weight
                w_t = self.weight(a_t)
                # 5. loss = w_t * <sg(eps_hat - eps), x0> + obs_weight * data fidelity (the noise model's likelihood)
                ax = op.A(x0)
                score_term = (eps_hat - eps).detach() * x0
                if self.data_term != "paper":
                    reg, obs = score_term.mean(dim=x_dims), obs_scale * noise.nll(y, ax)
                else:
                    reg, obs = score_term.sum(dim=x_dims), noise.nll_sum(y, ax)
                loss = (w_t * reg + self.obs_weight * obs).sum()
                # a non-finite mu from the previous step shows up here too, so the loop checks only the loss
                check_finite(self.label, i, t, loss.detach(), "loss", hint)
                # 6. one optimizer step on mu
                for group in optimizer.param_groups:
                    group["lr"] = self.lr * LR_SCHEDULES[self.lr_schedule](i / n_steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.returns == "last_x0":
                    last_x0 = x0.detach().clone()
                optimizer.step()
                # 7. with several samples of one measurement: push them apart where the data leaves them free
                if self.repulsion > 0 and problem.groups is not None:
                    with torch.no_grad():
                        drift = unpinned(op, repulsion_drift(unpinned(op, mu), problem.groups,
                                                             self.repulsion_bandwidth))
                        mu.add_(drift, alpha=self.repulsion * optimizer.param_groups[0]["lr"])
            if callback is not None:
                callback(
                    StepInfo(
                        step=i,
                        num_steps=n_steps,
                        t=t,
                        x=mu.detach(),
                        losses={
                            "loss": float(loss.detach()),
                            "reg": float(reg.detach().sum()),
                            "obs": float(obs.detach().sum()),
                            "weight": w_t,
                        },
                        note=note if i == 0 else None,
                    )
                )
        out = mu.detach() if self.returns == "mu" else last_x0
        check_finite(self.label, n_steps - 1, timesteps[-1].item(), out, "estimate", hint)
        return out.clamp(*prior.data_range) if self.clip_x0 and prior.data_range is not None else out
