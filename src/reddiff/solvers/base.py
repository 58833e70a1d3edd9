"""What every solver shares: the measured problem, per-step records, randomness, declared hyperparameters with one
style of validation, capability checks by type, and the reverse-sampler skeleton that DDIM, DPS, ΠGDM and DDRM fill
in with their ``step``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import ReddiffError, SolverError, UserCodeError
from ..noise import GaussianNoise, NoiseModel
from ..operators.base import LinearOperator, Operator, SVDOperator
from ..params import HyperParam, check_value, hyper, hyperparams

if TYPE_CHECKING:  # pragma: no cover
    from ..prior import DiffusionPrior

__all__ = ["Problem", "StepInfo", "Callback", "Solver", "Sampler", "SampleContext", "GeneratorLike", "SOLVERS",
           "per_sample_generators", "randn_like_per_sample", "check_finite", "ddim_sigma", "ddim_step"]

GeneratorLike = torch.Generator | Sequence[torch.Generator] | int | None



def robust_field() -> Any:
    """The ``robust`` field of the solvers with a data term (one definition; checked by :func:`check_robust`)."""
    return hyper("none", "robust data term: none (the noise model's likelihood), huber[:δ] or cauchy[:δ] (δ in 0..1 "
                 "pixel units, default 0.05): residuals beyond δ, such as outliers, pull less")


def check_robust(solver: Any) -> None:
    """One line for a bad ``robust`` setting of ``solver``."""
    from ..errors import ReddiffError
    from ..noise import parse_robust

    try:
        parse_robust(solver.robust)
    except ReddiffError as exc:
        raise SolverError(f"{solver.label}: {exc}") from None
    object.__setattr__(solver, "robust", solver.robust.strip().lower())  # one spelling: one settings fingerprint

@dataclass(frozen=True)
class Problem:
    """A measurement ``y = A(x) + v`` with noise ``v`` drawn from ``noise``.

    Args:
        y: the measurement, ``[B, ...]`` (batch first), in the operator's output units (pixels in [-1, 1]).
        operator: the forward model ``A`` (a :class:`reddiff.operators.Operator`).
        sigma_y: the Gaussian noise standard deviation in the same [-1, 1] units as ``y`` (the CLI takes it in
            0..1 pixel units and doubles it once); ignored when ``noise`` is given, which then sets it.
        noise: the :class:`reddiff.noise.NoiseModel` whose likelihood gives the solvers' data terms (default:
            Gaussian with ``sigma_y``). Always set after construction.
        groups: which batch entries are samples of one measurement: entry ``i`` belongs to group ``groups[i]``
            (RED-diff's ``repulsion`` acts among the members of a group); None: every entry is alone.
    """

    y: torch.Tensor
    operator: Operator
    sigma_y: float = 0.0
    noise: NoiseModel = None  # type: ignore[assignment]
    groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        sigma_y = float(self.sigma_y)
        if not math.isfinite(sigma_y) or sigma_y < 0:
            raise SolverError(f"sigma_y must be a finite number >= 0, got {self.sigma_y}")
        if not isinstance(self.y, torch.Tensor) or self.y.dim() < 1:
            raise SolverError("y must be a tensor with a batch dimension first")
        if not torch.isfinite(self.y).all():
            raise SolverError("the measurement y contains NaN or Inf values")
        if not isinstance(self.operator, Operator):
            raise SolverError(f"operator must be a reddiff Operator, got {type(self.operator).__name__}; wrap a "
                              "callable with reddiff.operators.CallableOperator")
        if self.noise is None:
            object.__setattr__(self, "noise", GaussianNoise(sigma_y))
        elif not isinstance(self.noise, NoiseModel):
            raise SolverError(f"noise must be a reddiff NoiseModel, got {type(self.noise).__name__}")
        elif sigma_y not in (0.0, self.noise.sigma_y):
            raise SolverError(f"sigma_y {sigma_y} disagrees with the noise model's {self.noise.sigma_y}; give one")
        object.__setattr__(self, "sigma_y", float(self.noise.sigma_y))
        if self.groups is not None:
            groups = tuple(int(g) for g in self.groups)
            if len(groups) != self.batch_size:
                raise SolverError(f"groups must name the group of each of the {self.batch_size} batch entries, got "
                                  f"{len(groups)}")
            object.__setattr__(self, "groups", groups)

    @property
    def batch_size(self) -> int:
        """Number of measurements in the batch."""
        return int(self.y.shape[0])

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of the unknown ``x`` including the batch dimension."""
        return (self.batch_size, *tuple(self.operator.x_shape))


@dataclass(frozen=True)
class StepInfo:
    """What a solver reports to its callback after each step.

    Attributes:
        step: 0-based step index.
        num_steps: total number of steps.
        t: the diffusion timestep of this step (an integer for discrete schedules).
        x: the current estimate (detached; RED-diff's ``mu``, a sampler's ``x0`` prediction).
        losses: scalar loss terms by name (e.g. ``{"loss": ..., "reg": ..., "obs": ...}``).
        note: a one-line remark of the solver at this step, else None (RED-diff at step 0: the start it chose
            itself for an operator without an estimate of its own).
    """

    step: int
    num_steps: int
    t: int | float
    x: torch.Tensor
    losses: dict[str, float] = field(default_factory=dict)
    note: str | None = None


Callback = Callable[[StepInfo], None]

#: solver name -> class, filled by every :class:`Solver` subclass that sets ``name`` (for the CLI and listings).
SOLVERS: dict[str, type[Solver]] = {}
#: the names of the solvers that work with latent priors.
LATENT_SOLVERS: list[str] = []

#: what each operator type offers, for the capability errors.
_NEEDS = {LinearOperator: "a linear operator (A_adjoint)",
          SVDOperator: "an SVD-structured operator (singulars, U, Ut, V, Vt)"}


class Solver:
    """Base of the solvers: a frozen dataclass whose fields, declared with :func:`reddiff.params.hyper`, are the
    hyperparameters (with the paper's defaults), validated here in one style, and the run record.

    Subclasses set ``name`` (the CLI name; it registers the class in :data:`SOLVERS`), ``label`` (the display name)
    and ``requires`` (the operator types they need), and implement ``__call__(prior, problem, generator=None,
    callback=None) -> estimate``; cross-field checks go in :meth:`check`.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    requires: ClassVar[tuple[type, ...]] = ()
    #: the solver works with latent priors (:class:`reddiff.LatentPrior`).
    latent_capable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            SOLVERS[cls.name] = cls
            if cls.latent_capable:
                LATENT_SOLVERS.append(cls.name)

    def __post_init__(self) -> None:
        self.normalize()
        for param in self.hyperparams():
            try:
                value = check_value(param, getattr(self, param.name))
            except ValueError as exc:
                raise SolverError(f"{self.label}: {exc}") from None
            object.__setattr__(self, param.name, value)
        self.check()

    def normalize(self) -> None:
        """Adjust fields before validation (e.g. case-fold a name; use ``object.__setattr__``); default: nothing."""

    def check(self) -> None:
        """Cross-field checks of a subclass (raise :class:`SolverError`); the default checks nothing."""

    @classmethod
    def hyperparams(cls) -> list[HyperParam]:
        """The declared hyperparameters, in field order."""
        return hyperparams(cls)

    def to_dict(self) -> dict[str, Any]:
        """The solver's name and fields as a JSON-serialisable dict (the run record)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"solver": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}

    def __call__(self, prior: DiffusionPrior, problem: Problem, generator: GeneratorLike = None,
                 callback: Callback | None = None) -> torch.Tensor:
        """Solve ``problem`` with ``prior``: one estimate or sample per measurement (``[B, ...]``, detached).

        Args:
            prior: a :class:`reddiff.DiffusionPrior`.
            problem: the measurement, operator and noise model.
            generator: randomness: a ``torch.Generator``, one per sample (results independent of the batch), an
                integer seed, or None.
            callback: called with a :class:`StepInfo` after every step.

        Raises:
            SolverError: the operator lacks what the solver needs, bad settings, or the run diverged (NaN/Inf).
        """
        raise NotImplementedError

    def check_prior(self, prior: DiffusionPrior) -> None:
        """Raise one clear error when the solver cannot use ``prior`` (a latent prior, for a solver that needs the
        denoiser in pixel space)."""
        from ..latent import LatentPrior

        if isinstance(prior, LatentPrior) and not self.latent_capable:
            name = prior.info.get("name") or "this prior"
            raise SolverError(f"{self.label} cannot use the latent prior {name}: it guides a pixel-space denoiser; "
                              f"with latent priors use {', '.join(LATENT_SOLVERS)}")

    def check_operator(self, operator: Operator) -> None:
        """Raise one clear error when ``operator`` is not of a type the solver needs."""
        for kind in self.requires:
            if not isinstance(operator, kind):
                raise SolverError(f"{self.label} cannot use operator {operator.task!r}: it needs "
                                  f"{_NEEDS.get(kind, kind.__name__)}")


@contextlib.contextmanager
def step_context(solver: str, step: int, num_steps: int, t: int) -> Iterator[None]:
    """Name the solver step in errors raised by the user's code inside it."""
    try:
        yield
    except UserCodeError as exc:
        where = "initial estimate" if step < 0 else f"step {step + 1} of {num_steps}, t={t}"
        raise UserCodeError(f"{exc} ({solver} {where})") from exc.__cause__


def per_sample_generators(generator: GeneratorLike, batch: int, device: torch.device) -> list[torch.Generator]:
    """The noise streams of a batch.

    Args:
        generator: ``None`` (a fresh, nondeterministic stream), an integer seed (one CPU generator seeded with it),
            one generator (the whole batch's noise is drawn from it at once: deterministic and fast, but a sample's
            draws depend on its position in the batch), or a sequence of ``batch`` generators, one per sample (a
            sample's result then does not depend on the batch it ran in; what the CLI uses, one per image).
        batch: batch size.
        device: device of the tensors to be drawn (generators on other devices are used and their draws moved).

    Returns:
        A list of one generator (shared by the batch) or of ``batch`` generators (one per sample).
    """
    if generator is None:
        gen_device = device if device.type == "cuda" else torch.device("cpu")
        seed = int(torch.randint(0, 2**62, (1,)).item())
        return [torch.Generator(device=gen_device).manual_seed(seed)]
    if isinstance(generator, torch.Generator):
        return [generator]
    if isinstance(generator, int) and not isinstance(generator, bool):
        return [torch.Generator().manual_seed(generator)]
    try:
        gens = list(generator)
    except TypeError:
        kind = type(generator).__name__
        raise SolverError(
            f"generator must be None, an integer seed, a torch.Generator or one per sample, got {kind}"
        ) from None
    if not all(isinstance(g, torch.Generator) for g in gens):
        raise SolverError("a sequence of generators must hold torch.Generator objects, one per sample")
    if len(gens) != batch:
        raise SolverError(f"got {len(gens)} generators for a batch of {batch}; pass one per sample")
    return gens


def randn_like_per_sample(like: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like ``like``: from the one shared generator, or sample ``i`` from
    ``generators[i]``."""
    if len(generators) == 1:
        g = generators[0]
        return torch.randn(like.shape, generator=g, device=g.device, dtype=like.dtype).to(like.device)
    draws = [
        torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype).to(like.device)
        for g in generators
    ]
    return torch.stack(draws)


def check_finite(solver: str, step: int, t: int, value: torch.Tensor, what: str, hint: str) -> None:
    """Stop with an error naming the step when ``value`` has NaN or Inf entries."""
    if not bool(torch.isfinite(value).all()):
        raise SolverError(f"{solver} diverged at step {step} (t={t}): the {what} is not finite; {hint}")


def decoding(callback: Callback | None, prior: Any, size: Sequence[int] | None) -> Callback | None:
    """``callback`` fed the decoded image of a latent prior's step (``StepInfo.x`` in pixels, as for pixel priors;
    one decoder pass per step, only when there is a callback)."""
    if callback is None:
        return None

    def call(info: StepInfo) -> None:
        with torch.no_grad():
            callback(dataclasses.replace(info, x=prior.decode(info.x, size)))

    return call


# -- the DDIM arithmetic the samplers share ---------------------------------------------------------------------
def ddim_sigma(abar_t: float, abar_prev: float, eta: float) -> float:
    """The DDIM noise level ``sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)``
    (Song et al. 2021, eq. 16).

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


# -- the reverse-sampler skeleton ----------------------------------------------------------------------------------
@dataclass
class SampleContext:
    """What a sampler's :meth:`Sampler.step` works with.

    Attributes:
        prior: the diffusion prior.
        problem: the measurement (None when sampling the prior alone).
        generators: the noise streams (one shared, or one per sample).
        state: whatever :meth:`Sampler.prepare` computed once per run (spectral quantities, ...).
    """

    prior: DiffusionPrior
    problem: Problem | None
    generators: list[torch.Generator]
    state: Any = None


class Sampler(Solver):
    """A reverse-diffusion sampler: its fields plus :meth:`step` (and optionally :meth:`prepare`).

    The loop visits ``prior.schedule.timesteps(steps)`` in descending order (for a discrete schedule spread over
    0..T-1 by the sampler's ``timestep_spacing``, ending at 0) from ``x_T ~ N(0, I)`` in the VP-equivalent variable
    (see :mod:`reddiff.schedule`), with ``abar_t = schedule.abar_of(t)``; the last step goes to ``abar_prev = 1``,
    i.e. to the clean estimate.
    Subclasses declare a ``steps`` field and may use :meth:`ddim_update` for the DDIM/DDPM update with their
    ``eta``.
    """

    #: what to suggest when the sample stops being finite.
    hint: ClassVar[str] = "check the prior and the measurement"
    #: the fewest steps with which the sampler was seen to return images related to the measurement (None: no
    #: known limit); fewer give a one-line note at the first step.
    min_steps: ClassVar[int | None] = None

    def few_steps_note(self) -> str | None:
        """The note for a run with fewer than :attr:`min_steps` steps, else None."""
        steps = int(self.steps)  # type: ignore[attr-defined]
        if self.min_steps is None or steps >= self.min_steps:
            return None
        return (f"{self.label} with {steps} steps: below {self.min_steps} its guidance steps, taken through the "
                "network at high noise, are not corrected by later ones and the result often does not fit the "
                f"measurement at all; use --steps {self.min_steps} or more")

    def grid(self, prior: DiffusionPrior) -> tuple[list, float]:
        """The descending timesteps visited and the ``abar`` the last step goes to (1: the clean estimate)."""
        spacing = getattr(self, "timestep_spacing", "linspace")
        return prior.schedule.timesteps(int(self.steps), "descending", spacing=spacing).tolist(), 1.0  # type: ignore[attr-defined]

    def prepare(self, ctx: SampleContext) -> Any:
        """Per-run quantities for :meth:`step` (stored in ``ctx.state``); the default computes nothing."""
        return None

    def step(self, ctx: SampleContext, x: torch.Tensor, t: int, a_t: float,
             a_prev: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """One reverse step from ``x_t`` to ``x_prev``; returns ``(x_prev, x0_hat, losses)``."""
        raise NotImplementedError

    def ddim_update(self, ctx: SampleContext, x0_hat: torch.Tensor, eps_hat: torch.Tensor, a_t: float,
                    a_prev: float) -> torch.Tensor:
        """The DDIM step with this sampler's ``eta``, drawing the noise it needs from the run's generators."""
        eta = float(self.eta)  # type: ignore[attr-defined]
        noise = randn_like_per_sample(x0_hat, ctx.generators) if ddim_sigma(a_t, a_prev, eta) > 0 else None
        return ddim_step(x0_hat, eps_hat, a_t, a_prev, eta, noise)

    def __call__(self, prior: DiffusionPrior, problem: Problem, generator: GeneratorLike = None,
                 callback: Callback | None = None) -> torch.Tensor:
        """Draw one sample per measurement (see :meth:`Solver.__call__`; ``StepInfo.x`` is that step's ``x0_hat``)."""
        self.check_prior(prior)
        self.check_operator(problem.operator)
        y = problem.y
        from ..latent import LatentPrior

        if isinstance(prior, LatentPrior):  # sample the latent, then decode it
            try:
                shape = prior.latent_shape(problem.x_shape)
            except ReddiffError as exc:
                raise SolverError(f"{self.label}: {exc}") from None
            size = problem.x_shape[-2:] if len(problem.x_shape) == 4 else None
            z = self.run(prior, problem, shape, generator, decoding(callback, prior, size), dtype=y.dtype,
                         device=y.device)
            with torch.no_grad():
                return prior.decode(z, size)
        return self.run(prior, problem, problem.x_shape, generator, callback, dtype=y.dtype, device=y.device)

    def run(self, prior: DiffusionPrior, problem: Problem | None, shape: tuple[int, ...], generator: GeneratorLike,
            callback: Callback | None, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The loop: draw ``x_T``, :meth:`prepare`, then :meth:`step` over the descending timesteps."""
        gens = per_sample_generators(generator, int(shape[0]), device)
        x = randn_like_per_sample(torch.empty(shape, dtype=dtype, device=device), gens)
        ctx = SampleContext(prior, problem, gens)
        ctx.state = self.prepare(ctx)
        steps = int(self.steps)  # type: ignore[attr-defined]
        schedule = prior.schedule
        timesteps, final = self.grid(prior)
        note = self.few_steps_note() if problem is not None else None
        for i, t in enumerate(timesteps):
            a_t = schedule.abar_of(t)
            a_prev = schedule.abar_of(timesteps[i + 1]) if i + 1 < len(timesteps) else final
            with step_context(self.label, i, steps, t):
                x, x0_hat, losses = self.step(ctx, x, t, a_t, a_prev)
            x = x.detach()
            check_finite(self.label, i, t, x, "sample", self.hint)
            if callback is not None:
                callback(StepInfo(step=i, num_steps=len(timesteps), t=t, x=x0_hat.detach(), losses=losses,
                                  note=note if i == 0 else None))
        return x
