"""Noise schedules: the one noise language every prior speaks, ``x_t = alpha_t x0 + sigma_t eps``, kept in float64.

A schedule gives the pair ``(alpha_t, sigma_t)`` over its own time variable ``t`` (the k-diffusion / azula view):

* :class:`VPSchedule` -- discrete variance preserving (DDPM; Ho et al. 2020, eq. 4): ``alpha_t = sqrt(abar_t)``,
  ``sigma_t = sqrt(1 - abar_t)``, ``abar_t = prod_{s <= t} (1 - beta_s)``, integer ``t`` in ``0 .. T-1``
  (guided-diffusion's and diffusers' convention); betas ``linear``, ``scaled_linear`` or ``cosine``
  (diffusers' ``squaredcos_cap_v2``), any ``T``;
* :class:`VPContinuousSchedule` -- the VP SDE (Song et al. 2021): ``alpha(t) = exp(-t^2 (b1 - b0) / 4 - t b0 / 2)``;
* :class:`EDMSchedule` -- variance exploding, EDM's (Karras et al. 2022): ``alpha = 1``, ``sigma = t``;
* :class:`FlowSchedule` -- rectified flow: ``alpha = 1 - t``, ``sigma = t``;
* :class:`TabulatedSchedule` -- any discrete table of pairs.

Solvers work with the *VP-equivalent* noise level ``abar = alpha^2 / (alpha^2 + sigma^2)``
(:meth:`NoiseSchedule.abar_of`) and variable ``x / sqrt(alpha^2 + sigma^2)``, which the prior maps to its own
(:meth:`reddiff.DiffusionPrior.eps`). The same maths then serves every family: the signal-to-noise ratio
``alpha^2 / sigma^2``, all a denoiser depends on, is exact, and a VP schedule's numbers are its own. RED-diff's weight
``lambda f(sigma_t / alpha_t)`` is the same in both variables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .errors import ReddiffError

__all__ = ["NoiseSchedule", "VPSchedule", "VPContinuousSchedule", "EDMSchedule", "FlowSchedule", "TabulatedSchedule",
           "BETA_SCHEDULES", "TIMESTEP_ORDERS", "TIMESTEP_SPACINGS", "linear_betas", "cosine_betas",
           "schedule_from_dict"]

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
TIMESTEP_ORDERS = ("descending", "ascending", "random")
#: how a discrete schedule's steps are spread over ``0 .. t_max`` (diffusers' names; ``linspace`` includes both ends;
#: ``stride`` is the official RED-diff code's ``range(0, T, T // N)``).
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing", "stride")


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas of DDPM, scaled as guided-diffusion does so that T = 1000 gives 1e-4 .. 0.02.

    Args:
        num_timesteps: T.
        beta_start: beta_0 for T = 1000.
        beta_end: beta_{T-1} for T = 1000.

    Returns:
        float64 tensor [T].
    """
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine betas of improved DDPM (Nichol & Dhariwal 2021, eq. 17), clipped at ``max_beta``."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def _order(ts: torch.Tensor, order: str, generator: torch.Generator | None) -> torch.Tensor:
    """``ts`` (ascending) in the asked order."""
    if order not in TIMESTEP_ORDERS:
        raise ReddiffError(f"unknown timestep order {order!r}; accepted: {', '.join(TIMESTEP_ORDERS)}")
    if order == "descending":
        return ts.flip(0)
    if order == "ascending":
        return ts
    return ts[torch.randperm(ts.numel(), generator=generator)]


class NoiseSchedule:
    """The pairs ``(alpha_t, sigma_t)`` over a time variable ``t`` (see the module docstring).

    Subclasses implement :meth:`alpha_sigma` and :meth:`timesteps`; ``family`` names the kind (``vp``, ``ve``,
    ``flow``, ...) for run records.
    """

    family: ClassVar[str] = ""
    #: whether ``t`` is an integer index into a table.
    discrete: ClassVar[bool] = False

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` as float64 tensors shaped like ``t``."""
        raise NotImplementedError

    def abar_of(self, t: int | float) -> float:
        """The VP-equivalent ``abar = alpha^2 / (alpha^2 + sigma^2)`` at one time (what the solvers' maths uses)."""
        a, s = self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        return float(a * a / (a * a + s * s))

    def scale_of(self, t: int | float) -> float:
        """``sqrt(alpha^2 + sigma^2)``: a VP-equivalent variable times this is the schedule's own (1 for VP)."""
        a, s = self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        return float((a * a + s * s).sqrt())

    def timesteps(self, num_steps: int, order: str = "descending", generator: torch.Generator | None = None,
                  t_max: float | None = None, allow_repeats: bool = False,
                  spacing: str = "linspace") -> torch.Tensor:
        """The ``num_steps`` times a solver visits, from the noisiest (``t_max``, default the schedule's top) to the
        least noisy, then put in ``order``."""
        raise NotImplementedError

    def time_at_abar(self, abar: float) -> float:
        """The time whose VP-equivalent ``abar`` is closest to ``abar``: the same noise level on this schedule
        (how a setting given on one schedule, e.g. a preset's ``t_max``, carries over to another)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (for run records and exported configs); :func:`schedule_from_dict` reads it."""
        raise NotImplementedError


# -- discrete schedules --------------------------------------------------------------------------------------------
class _Discrete(NoiseSchedule):
    """A table of ``T`` pairs at integer times ``0 .. T-1``; ``abar`` holds the VP-equivalent levels."""

    discrete = True
    num_timesteps: int
    abar: torch.Tensor

    def abar_of(self, t: int | float) -> float:
        return float(self.abar[int(t)])

    def time_at_abar(self, abar: float) -> float:
        return int(torch.argmin((self.abar - float(abar)).abs()))

    def timesteps(self, num_steps: int, order: str = "descending", generator: torch.Generator | None = None,
                  t_max: float | None = None, allow_repeats: bool = False,
                  spacing: str = "linspace") -> torch.Tensor:
        """The ``num_steps`` integer timesteps visited by a sampler (respacing).

        ``linspace`` (default): evenly spaced over ``0 .. t_max`` including both ends (``num_steps = T`` gives every
        timestep; ``num_steps = 1`` gives ``t_max``). ``leading``: ``0, k, 2k, ...`` with ``k = (t_max + 1) //
        num_steps`` (diffusers' default: never visits ``T - 1``). ``trailing``: ``round(t_max + 1 - i k) - 1``,
        ending at ``t_max``. ``stride``: every timestep of ``range(0, t_max + 1, k)`` with the same ``k``: the
        official RED-diff, DDRM and ΠGDM code's grid, which holds *more* than ``num_steps`` timesteps when ``k`` does
        not divide ``t_max + 1`` (334 for 300 steps of T = 1000) and every timestep once when ``num_steps`` exceeds
        them.

        Args:
            num_steps: how many timesteps, 1 .. t_max + 1.
            order: ``descending`` (T-1 ... 0, the default and the paper's best), ``ascending``, or ``random``
                (a permutation drawn from ``generator``).
            generator: randomness for ``order="random"``.
            t_max: the largest timestep (default ``T - 1``): the steps are spread over ``0 .. t_max``.
            allow_repeats: allow more steps than timesteps in ``0 .. t_max`` (some are then visited twice in a row;
                fine for RED-diff's stochastic optimisation, not for samplers).
            spacing: ``linspace``, ``leading``, ``trailing`` or ``stride``.

        Returns:
            int64 tensor [num_steps] (``stride``: as many as its grid holds).
        """
        if order not in TIMESTEP_ORDERS:
            raise ReddiffError(f"unknown timestep order {order!r}; accepted: {', '.join(TIMESTEP_ORDERS)}")
        if spacing not in TIMESTEP_SPACINGS:
            raise ReddiffError(f"unknown timestep spacing {spacing!r}; accepted: {', '.join(TIMESTEP_SPACINGS)}")
        top = self.num_timesteps - 1 if t_max is None else int(t_max)
        if not 0 <= top < self.num_timesteps:
            raise ReddiffError(f"t_max must be between 0 and {self.num_timesteps - 1}, got {t_max}")
        if int(num_steps) < 1 or (int(num_steps) > top + 1 and not allow_repeats):
            raise ReddiffError(f"steps must be between 1 and {top + 1}, got {num_steps}")
        i = torch.arange(num_steps, dtype=torch.int64)
        if spacing == "stride":
            ts = torch.arange(0, top + 1, max((top + 1) // int(num_steps), 1), dtype=torch.int64)
        elif spacing == "leading" and num_steps <= top + 1:
            ts = i * ((top + 1) // num_steps)
        elif spacing == "leading":  # more steps than timesteps: each timestep visited once or twice in a row
            ts = i * (top + 1) // num_steps
        elif spacing == "trailing":
            k = (top + 1) / num_steps
            ts = (torch.round(top + 1 - i.double() * k).long() - 1).clamp(0, top).flip(0)
        elif num_steps == 1:
            ts = torch.tensor([top], dtype=torch.int64)
        else:
            ts = torch.linspace(0, top, num_steps, dtype=torch.float64).round().long()
        return _order(ts, order, generator)


@dataclass(frozen=True)
class VPSchedule(_Discrete):
    """A discrete VP schedule.

    Attributes:
        kind: ``linear`` (guided-diffusion's scaling ``1000 / T`` unless ``beta_start``/``beta_end`` are given, as
            diffusers' configs do), ``scaled_linear`` (``linspace(sqrt(b0), sqrt(b1))^2``, Stable Diffusion's), or
            ``cosine`` (improved DDPM, diffusers' ``squaredcos_cap_v2``).
        num_timesteps: T (1000 for the public checkpoints).
        beta_start: beta_0 (None: 1e-4 scaled by 1000 / T).
        beta_end: beta_{T-1} (None: 0.02 scaled by 1000 / T).
        float32: compute the betas and their cumulative product in float32, as diffusers does, then widen to
            float64: the exact table a diffusers model was trained with (its ``abar`` near ``t = T-1`` differs from
            the float64 one by up to 1e-5 relative).
        betas: float64 [T].
        abar: float64 [T], ``abar_t = prod_{s<=t}(1 - beta_s)``.
    """

    kind: str = "linear"
    num_timesteps: int = 1000
    beta_start: float | None = None
    beta_end: float | None = None
    float32: bool = False
    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    abar: torch.Tensor = field(init=False, repr=False, compare=False)

    family = "vp"

    def __post_init__(self) -> None:
        if self.kind not in BETA_SCHEDULES:
            raise ReddiffError(f"unknown beta schedule {self.kind!r}; accepted: {', '.join(BETA_SCHEDULES)}")
        if int(self.num_timesteps) < 1:
            raise ReddiffError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        n = int(self.num_timesteps)
        dtype = torch.float32 if self.float32 else torch.float64
        if self.kind == "cosine":
            betas = cosine_betas(n).to(dtype)
        elif self.beta_start is None and self.beta_end is None and self.kind == "linear":
            betas = linear_betas(n)
        else:
            b0 = 1e-4 if self.beta_start is None else float(self.beta_start)
            b1 = 0.02 if self.beta_end is None else float(self.beta_end)
            if not 0 < b0 <= b1 < 1:
                raise ReddiffError(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {b0}, {b1}")
            if self.kind == "linear":
                betas = torch.linspace(b0, b1, n, dtype=dtype)
            else:
                betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=dtype) ** 2
        object.__setattr__(self, "betas", betas.to(torch.float64))
        object.__setattr__(self, "abar", torch.cumprod(1.0 - betas, dim=0).to(torch.float64))

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.abar[torch.as_tensor(t).long()]
        return abar.sqrt(), (1.0 - abar).sqrt()

    def scale_of(self, t: int | float) -> float:
        return 1.0

    @property
    def sigmas(self) -> torch.Tensor:
        """``sqrt(1 - abar_t) / sqrt(abar_t)``: the noise-to-signal ratio (inverse square-root SNR), float64 [T]."""
        return ((1 - self.abar) / self.abar).sqrt()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"family": "vp", "kind": self.kind, "num_timesteps": self.num_timesteps}
        if self.beta_start is not None or self.beta_end is not None:
            out.update(beta_start=self.beta_start, beta_end=self.beta_end)
        if self.float32:
            out["float32"] = True
        return out


class TabulatedSchedule(_Discrete):
    """Any discrete table of pairs ``(alpha_i, sigma_i)``, ``i = 0 .. T-1``, noise growing with ``i``.

    Args:
        alpha: float64 [T].
        sigma: float64 [T], with ``sigma_i / alpha_i`` increasing.
        family: the family name for run records (``ve``, ``flow``, ...).
    """

    def __init__(self, alpha: Any, sigma: Any, family: str = "tabulated") -> None:
        a = torch.as_tensor(alpha, dtype=torch.float64).flatten()
        s = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        if a.numel() != s.numel() or a.numel() < 1 or not bool(((a >= 0) & (s > 0)).all()):
            raise ReddiffError("a tabulated schedule needs equally long alpha >= 0 and sigma > 0")
        ratio = s / a.clamp_min(1e-300)
        if a.numel() > 1 and not bool((ratio[1:] > ratio[:-1]).all()):
            raise ReddiffError("a tabulated schedule's noise-to-signal ratio sigma/alpha must increase with t")
        self.alpha, self.sigma = a, s
        self.num_timesteps = a.numel()
        self.abar = a * a / (a * a + s * s)
        self.family = family  # type: ignore[misc]

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(t).long()
        return self.alpha[i], self.sigma[i]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "kind": "tabulated", "alpha": self.alpha.tolist(), "sigma": self.sigma.tolist()}


# -- continuous schedules ------------------------------------------------------------------------------------------
class _Continuous(NoiseSchedule):
    """A schedule over real ``t`` in ``[t_min, t_max]``; steps are spread by :meth:`grid`."""

    t_min: float
    t_max: float

    def time_at_abar(self, abar: float) -> float:
        lo, hi = self.t_min, self.t_max  # abar decreases with t: bisection
        if abar >= self.abar_of(lo):
            return lo
        if abar <= self.abar_of(hi):
            return hi
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.abar_of(mid) > abar else (lo, mid)
        return 0.5 * (lo + hi)

    def grid(self, num_steps: int, top: float) -> torch.Tensor:
        """``num_steps`` ascending times from ``t_min`` to ``top`` (uniform in ``t``; EDM overrides)."""
        if num_steps == 1:
            return torch.tensor([top], dtype=torch.float64)
        return torch.linspace(self.t_min, top, num_steps, dtype=torch.float64)

    def timesteps(self, num_steps: int, order: str = "descending", generator: torch.Generator | None = None,
                  t_max: float | None = None, allow_repeats: bool = False,
                  spacing: str = "linspace") -> torch.Tensor:
        """``num_steps`` float64 times from ``t_max`` (default the schedule's) down to ``t_min``, in ``order``.

        A continuous schedule has one grid (uniform in ``t``; EDM's ``rho`` rule): ``spacing`` names a discrete
        schedule's respacing and is accepted for the same call, and repeats never arise."""
        if spacing not in TIMESTEP_SPACINGS:
            raise ReddiffError(f"unknown timestep spacing {spacing!r}; accepted: {', '.join(TIMESTEP_SPACINGS)}")
        top = self.t_max if t_max is None else float(t_max)
        if not self.t_min <= top <= self.t_max:
            raise ReddiffError(f"t_max must be between {self.t_min:g} and {self.t_max:g}, got {t_max}")
        if int(num_steps) < 1:
            raise ReddiffError(f"steps must be >= 1, got {num_steps}")
        return _order(self.grid(int(num_steps), top), order, generator)


def _check_times(low: float, high: float, name: str, below: float | None = None) -> None:
    """``0 < low < high`` (``< below``): the interval a continuous schedule's times live in."""
    bound = f" < {below:g}" if below is not None else ""
    ok = all(isinstance(v, int | float) and math.isfinite(v) for v in (low, high)) and 0 < low < high
    if not ok or (below is not None and high >= below):
        raise ReddiffError(f"{name}_min and {name}_max must satisfy 0 < {name}_min < {name}_max{bound} "
                           f"(both signal and noise must be left at the ends), got {low}, {high}")


@dataclass(frozen=True)
class VPContinuousSchedule(_Continuous):
    """The VP SDE's schedule: ``alpha(t) = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2)``,
    ``sigma = sqrt(1 - alpha^2)``, ``t`` in ``[t_min, t_max]``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    family = "vp-continuous"

    def __post_init__(self) -> None:
        _check_times(self.t_min, self.t_max, "t")
        if not 0 <= self.beta_min <= self.beta_max or self.beta_max <= 0:
            raise ReddiffError(f"VP SDE betas must satisfy 0 <= beta_min <= beta_max, beta_max > 0; got "
                               f"{self.beta_min}, {self.beta_max}")

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        log_alpha = -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        alpha = log_alpha.exp()
        return alpha, (-torch.expm1(2 * log_alpha)).sqrt()

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min,
                "t_max": self.t_max}


@dataclass(frozen=True)
class EDMSchedule(_Continuous):
    """Variance exploding, EDM's parameterisation: ``alpha = 1``, ``sigma = t`` in ``[sigma_min, sigma_max]``;
    steps spread by EDM's ``rho`` rule (Karras et al. 2022, eq. 5)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    family = "ve"

    def __post_init__(self) -> None:
        _check_times(self.sigma_min, self.sigma_max, "sigma")
        if not self.rho > 0:
            raise ReddiffError(f"EDM's rho must be > 0, got {self.rho}")

    @property
    def t_min(self) -> float:  # type: ignore[override]
        return self.sigma_min

    @property
    def t_max(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.ones_like(t), t

    def grid(self, num_steps: int, top: float) -> torch.Tensor:
        if num_steps == 1:
            return torch.tensor([top], dtype=torch.float64)
        u = torch.linspace(0, 1, num_steps, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), top ** (1 / self.rho)
        return (lo + u * (hi - lo)) ** self.rho

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho}


@dataclass(frozen=True)
class FlowSchedule(_Continuous):
    """Rectified flow: ``x_t = (1 - t) x0 + t eps``, ``t`` in ``[t_min, t_max]`` (``t_max < 1``: at ``t = 1`` there is
    no signal left, and ``sigma / alpha`` is infinite)."""

    t_min: float = 1e-3
    t_max: float = 0.999

    family = "flow"

    def __post_init__(self) -> None:
        _check_times(self.t_min, self.t_max, "t", below=1.0)

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        return 1.0 - t, t

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "t_min": self.t_min, "t_max": self.t_max}


def schedule_from_dict(data: dict[str, Any]) -> NoiseSchedule:
    """The schedule a :meth:`NoiseSchedule.to_dict` describes."""
    d = dict(data)
    family = d.pop("family", "vp")
    classes = {"vp": VPSchedule, "vp-continuous": VPContinuousSchedule, "ve": EDMSchedule, "flow": FlowSchedule}
    if family not in classes:
        raise ReddiffError(f"unknown schedule family {family!r}; accepted: {', '.join(classes)}")
    try:
        if d.get("kind") == "tabulated":
            return TabulatedSchedule(d["alpha"], d["sigma"], family)
        return classes[family](**d)
    except (TypeError, ValueError, KeyError) as exc:
        raise ReddiffError(f"bad {family} schedule settings {d}: {type(exc).__name__}: {exc}") from None
