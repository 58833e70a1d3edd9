"""Measurement noise models: Gaussian (default) and Poisson (``poisson:PEAK``).

A :class:`NoiseModel` draws noisy measurements (:meth:`~NoiseModel.sample`) and gives the data-fidelity terms that
solvers minimise:

* :meth:`~NoiseModel.nll` -- per-sample data term in RED-diff's *mean* normalisation: the negative log-likelihood
  per element times the noise variance ``sigma_y**2`` of the model (at mid-grey for Poisson). For Gaussian noise this
  is exactly ``0.5 * mean((y - Ax)**2)``, the reference normalisation under which the published hyperparameters
  carry over; for Poisson noise it reduces to the same value at mid-grey in the high-count limit.
* :meth:`~NoiseModel.nll_sum` -- the per-sample negative log-likelihood itself (up to a constant): RED-diff's
  ``data_term="paper"``.
* :meth:`~NoiseModel.residual_norm` -- the per-sample "residual norm" DPS differentiates:
  ``sqrt(2 * m * nll)`` with ``m`` the number of measured entries, i.e. ``||y - Ax||`` for Gaussian noise and its
  likelihood-weighted analogue (the square root of the scaled Poisson deviance) for Poisson noise.

Two wrappers change one side only: :class:`Outliers` corrupts a fraction of the simulated measurement with
salt-and-pepper values (the solver is not told: the data terms stay the base model's), and :class:`Robust` replaces
a Gaussian model's squared residual by a robust penalty (Huber or Cauchy) in every data term, so that a few wild
measurements pull less (the simulation stays the base model's).

All three return a ``[B]`` tensor and are differentiable in ``Ax``. Units: pixels in [-1, 1], as everywhere inside
the library.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from reddiff.errors import ReddiffError

__all__ = ["NoiseModel", "GaussianNoise", "PoissonNoise", "Outliers", "Robust", "parse_noise", "parse_robust",
           "robust_noise", "NOISE_MODELS", "ROBUST_TERMS", "ROBUST_DELTA"]

#: Accepted noise specifications, for messages and ``--help``.
NOISE_MODELS = {"gaussian": "y = A(x) + sigma_y * N(0, I) (sigma_y from --sigma-y)",
                "poisson:PEAK": "photon counts: y = 2 Poisson(PEAK (A(x) + 1) / 2) / PEAK - 1"}


def _dims(t: Tensor) -> tuple[int, ...]:
    return tuple(range(1, t.dim()))


def _draw_device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


class NoiseModel:
    """Interface of a measurement noise model (see the module docstring).

    Attributes:
        name: Canonical specification, e.g. ``"gaussian"`` or ``"poisson:30.0"``.
        sigma_y: Standard deviation of the noise in [-1, 1] units (for Poisson: at mid-grey, ``sqrt(2 / PEAK)``);
            what ``Problem.sigma_y`` should hold.
    """

    name: str = ""
    sigma_y: float = 0.0

    def sample(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A noisy measurement of ``clean = A(x)`` (``[B, ...]``), drawn from ``generator``."""
        raise NotImplementedError

    def nll(self, y: Tensor, ax: Tensor) -> Tensor:
        """Per-sample data term in the mean normalisation (``[B]``); Gaussian: ``0.5 * mean((y - ax)**2)``."""
        raise NotImplementedError

    def nll_sum(self, y: Tensor, ax: Tensor) -> Tensor:
        """Per-sample negative log-likelihood up to a constant (``[B]``)."""
        raise NotImplementedError

    def residual_norm(self, y: Tensor, ax: Tensor) -> Tensor:
        """Per-sample ``sqrt(2 * m * nll(y, ax))`` (``[B]``); Gaussian: ``||y - ax||``."""
        m = math.prod(y.shape[1:])
        return torch.sqrt((2.0 * m * self.nll(y, ax)).clamp_min(torch.finfo(ax.dtype).tiny))

    def params(self) -> dict[str, Any]:
        """JSON-serialisable description, for run records."""
        return {"noise": self.name, "sigma_y": self.sigma_y}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, sigma_y={self.sigma_y:g})"


class GaussianNoise(NoiseModel):
    """``y = A(x) + sigma_y * eps``, ``eps ~ N(0, I)``.

    Args:
        sigma_y: Standard deviation in [-1, 1] units (>= 0).
    """

    def __init__(self, sigma_y: float = 0.0) -> None:
        sigma_y = float(sigma_y)
        if not (math.isfinite(sigma_y) and sigma_y >= 0):
            raise ReddiffError(f"sigma_y must be a finite number >= 0, got {sigma_y}")
        self.sigma_y = sigma_y
        self.name = "gaussian"

    def sample(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.sigma_y == 0:
            return clean.clone()
        eps = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=_draw_device(generator, clean))
        return clean + self.sigma_y * eps.to(clean.device)

    def nll(self, y: Tensor, ax: Tensor) -> Tensor:
        return 0.5 * (y - ax).pow(2).mean(dim=_dims(ax))

    def nll_sum(self, y: Tensor, ax: Tensor) -> Tensor:
        if self.sigma_y <= 0:
            raise ReddiffError("the Gaussian likelihood ||y - A(x)||^2 / (2 sigma_y^2) needs sigma_y > 0")
        return (y - ax).pow(2).sum(dim=_dims(ax)) / (2.0 * self.sigma_y**2)

    def residual_norm(self, y: Tensor, ax: Tensor) -> Tensor:
        return torch.linalg.vector_norm((y - ax).flatten(1), dim=1)


class PoissonNoise(NoiseModel):
    """Photon-counting noise at ``peak`` photons for a white pixel.

    Convention: the pixel value ``v`` in [-1, 1] has intensity ``(v + 1) / 2`` in [0, 1]; the detector counts
    ``k ~ Poisson(peak * (A(x) + 1) / 2)`` photons and the measurement is mapped back to [-1, 1] units,
    ``y = 2 k / peak - 1`` (so ``E[y] = A(x)``, ``Var[y] = 2 (A(x) + 1) / peak``). Negative rates (``A(x) < -1``)
    are clipped to 0 when sampling.

    Data terms, with ``k = peak (y + 1) / 2`` and ``lam = peak (A(x) + 1) / 2``: the negative log-likelihood
    ``lam - k log(lam)`` is written as half the Poisson deviance ``lam - k + k log(k / lam)`` (zero at ``lam = k``;
    the same gradient). :meth:`nll_sum` sums it over the measurement; :meth:`nll` is its mean times
    ``sigma_y**2 = 2 / peak`` (the variance at mid-grey), which equals ``0.5 * mean((y - Ax)**2 / (Ax + 1))`` to
    second order: the Gaussian mean data term at mid-grey, weighted by the inverse intensity elsewhere. For
    ``lam < eps`` (``eps = 1e-3`` photons) the deviance is continued by its second-order Taylor expansion at
    ``eps``, so the term stays finite, convex and differentiable for any ``A(x)``.

    Args:
        peak: Expected photon count of a white pixel (> 0).
    """

    eps: float = 1e-3

    def __init__(self, peak: float) -> None:
        peak = float(peak)
        if not (math.isfinite(peak) and peak > 0):
            raise ReddiffError(f"Poisson peak must be a finite number > 0, got {peak}")
        self.peak = peak
        self.sigma_y = math.sqrt(2.0 / peak)
        self.name = f"poisson:{peak!r}"

    def params(self) -> dict[str, Any]:
        return {**super().params(), "peak": self.peak}

    def sample(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        rate = (self.peak * (clean.detach() + 1.0) / 2.0).clamp_min(0.0)
        device = _draw_device(generator, clean)
        counts = torch.poisson(rate.to(device=device, dtype=torch.float64), generator=generator)
        return (2.0 * counts / self.peak - 1.0).to(device=clean.device, dtype=clean.dtype)

    def _deviance(self, y: Tensor, ax: Tensor) -> Tensor:
        """Elementwise ``lam - k + k log(k / lam)`` with the quadratic continuation below ``eps``."""
        k = (self.peak * (y + 1.0) / 2.0).clamp_min(0.0)
        lam = self.peak * (ax + 1.0) / 2.0
        eps = self.eps
        safe = lam.clamp_min(eps)
        k_log_k = torch.where(k > 0, k * torch.log(torch.where(k > 0, k, torch.ones_like(k))), torch.zeros_like(k))
        dev = safe - k - k * torch.log(safe) + k_log_k
        # below eps: f(eps) + f'(eps) (lam - eps) + f''(eps) (lam - eps)^2 / 2, with f' = 1 - k / lam, f'' = k / lam^2
        d = lam - eps
        taylor = dev + (1.0 - k / eps) * d + 0.5 * (k / eps**2) * d * d
        return torch.where(lam >= eps, dev, taylor)

    def nll(self, y: Tensor, ax: Tensor) -> Tensor:
        return self.sigma_y**2 * self._deviance(y, ax).mean(dim=_dims(ax))

    def nll_sum(self, y: Tensor, ax: Tensor) -> Tensor:
        return self._deviance(y, ax).sum(dim=_dims(ax))


def parse_noise(spec: str | None, sigma_y: float = 0.0) -> NoiseModel:
    """The noise model for a specification.

    Args:
        spec: ``None`` or ``"gaussian"`` (Gaussian with ``sigma_y``), or ``"poisson:PEAK"`` (``PEAK > 0`` photons
            for a white pixel).
        sigma_y: Gaussian standard deviation in [-1, 1] units; must be 0 with Poisson noise.

    Raises:
        ReddiffError: Unknown model, bad ``PEAK``, or ``sigma_y > 0`` with Poisson noise.
    """
    text = "gaussian" if spec is None else str(spec).strip().lower()
    name, sep, raw = text.partition(":")
    if name == "gaussian":
        if sep:
            raise ReddiffError(f"gaussian noise takes no parameter (its level is sigma_y), got {spec!r}")
        return GaussianNoise(sigma_y)
    if name == "poisson":
        try:
            peak = float(raw)
        except ValueError:
            peak = math.nan
        if not (math.isfinite(peak) and peak > 0):
            raise ReddiffError(f"bad noise {spec!r}: poisson takes PEAK, a number > 0 (photons for a white pixel)")
        if float(sigma_y) > 0:
            raise ReddiffError("Poisson noise has no sigma_y: leave sigma_y at 0 with poisson:PEAK")
        return PoissonNoise(peak)
    raise ReddiffError(f"unknown noise model {spec!r}; accepted: {', '.join(NOISE_MODELS)}")


class Outliers(NoiseModel):
    """Measurements of ``base`` in which a fraction of the entries are replaced by salt-and-pepper outliers (-1 or
    +1, equally likely), as in the outlier benchmarks of the robust-restoration literature. Only :meth:`sample`
    changes: the data terms are ``base``'s, so a solver that is not told (a squared data term) sees wild residuals.

    Args:
        base: the noise model of the other entries.
        fraction: the share of corrupted entries, 0 <= fraction < 1.
    """

    def __init__(self, base: NoiseModel, fraction: float) -> None:
        fraction = float(fraction)
        if not (math.isfinite(fraction) and 0 <= fraction < 1):
            raise ReddiffError(f"the outlier fraction must be a number with 0 <= F < 1, got {fraction}")
        self.base, self.fraction = base, fraction
        self.sigma_y = base.sigma_y
        self.name = f"{base.name}+outliers:{fraction!r}"

    def params(self) -> dict[str, Any]:
        return {**self.base.params(), "outliers": self.fraction}

    def sample(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        y = self.base.sample(clean, generator)
        if self.fraction == 0:
            return y
        u = torch.rand(y.shape, generator=generator, dtype=torch.float64, device=_draw_device(generator, y))
        u = u.to(y.device)
        hit = u < self.fraction
        salt = torch.where(u < 0.5 * self.fraction, -torch.ones_like(y), torch.ones_like(y))
        return torch.where(hit, salt, y)

    def nll(self, y: Tensor, ax: Tensor) -> Tensor:
        return self.base.nll(y, ax)

    def nll_sum(self, y: Tensor, ax: Tensor) -> Tensor:
        return self.base.nll_sum(y, ax)

    def residual_norm(self, y: Tensor, ax: Tensor) -> Tensor:
        return self.base.residual_norm(y, ax)


#: Robust penalties ``rho(r)`` (each equals ``r^2 / 2`` for small residuals ``|r| << delta``).
ROBUST_TERMS = {"none": "the noise model's own likelihood (squared residual for Gaussian noise)",
                "huber": "r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond: linear growth",
                "cauchy": "(delta^2/2) log(1 + (r/delta)^2): bounded influence, outliers nearly ignored"}

#: Default ``delta`` of the robust penalties, in 0..1 pixel units like ``--sigma-y`` (a residual beyond it is treated
#: as a possible outlier).
ROBUST_DELTA = 0.05


class Robust(NoiseModel):
    """A Gaussian model's data terms with a robust penalty ``rho`` on each residual ``r = y - A(x)`` instead of
    ``r^2 / 2`` (see :data:`ROBUST_TERMS`): ``nll = mean(rho(r))``, ``nll_sum = sum(rho(r)) / sigma_y^2`` and DPS's
    ``residual_norm = sqrt(2 m nll)``. Residuals well below ``delta`` count exactly as before, so presets carry over.

    Args:
        base: a Gaussian noise model (possibly with :class:`Outliers`); it also draws the measurements.
        kind: ``huber`` or ``cauchy``.
        delta: the scale of the penalty in [-1, 1] units (> 0).
    """

    def __init__(self, base: NoiseModel, kind: str, delta: float) -> None:
        inner = base.base if isinstance(base, Outliers) else base
        if isinstance(inner, Robust):
            raise ReddiffError(f"the noise model {base.name} already has a robust data term; give it once")
        if not isinstance(inner, GaussianNoise):
            raise ReddiffError(f"robust data terms are for Gaussian noise; the noise model is {base.name}")
        if kind not in ("huber", "cauchy"):
            raise ReddiffError(f"unknown robust data term {kind!r}; accepted: huber, cauchy")
        try:
            delta = float(delta)
        except (TypeError, ValueError):
            delta = math.nan
        if not (math.isfinite(delta) and delta > 0):
            raise ReddiffError(f"the robust delta must be a number > 0, got {delta}")
        self.base, self.kind, self.delta = base, kind, float(delta)
        self.sigma_y = base.sigma_y
        self.name = f"{base.name}|{kind}:{self.delta!r}"

    def params(self) -> dict[str, Any]:
        return {**self.base.params(), "robust": self.kind, "robust_delta": self.delta}

    def sample(self, clean: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.base.sample(clean, generator)

    def rho(self, r: Tensor) -> Tensor:
        """The elementwise penalty of residuals ``r``."""
        d = self.delta
        if self.kind == "huber":
            a = r.abs()
            return torch.where(a <= d, 0.5 * r * r, d * (a - 0.5 * d))
        return 0.5 * d * d * torch.log1p((r / d) ** 2)

    def despeckle(self, y: Tensor) -> tuple[Tensor, int]:
        """``y`` with the entries that stand out from their 3x3 neighbourhood by more than ``delta`` replaced by the
        neighbourhood's median, and how many were replaced: a robust start for a measurement that is a picture
        (``[B, C, H, W]``, ``H, W >= 3``; others are returned unchanged)."""
        if y.dim() != 4 or min(y.shape[-2:]) < 3:
            return y, 0
        padded = torch.nn.functional.pad(y, (1, 1, 1, 1), mode="replicate")
        patches = padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(*y.shape, 9)
        median = patches.median(dim=-1).values
        wild = (y - median).abs() > self.delta
        return torch.where(wild, median, y), int(wild.sum())

    def nll(self, y: Tensor, ax: Tensor) -> Tensor:
        return self.rho(y - ax).mean(dim=_dims(ax))

    def nll_sum(self, y: Tensor, ax: Tensor) -> Tensor:
        if self.sigma_y <= 0:
            raise ReddiffError("the likelihood-scaled data term divides by sigma_y^2 and needs sigma_y > 0")
        return self.rho(y - ax).sum(dim=_dims(ax)) / self.sigma_y**2


def parse_robust(spec: str) -> tuple[str, float | None]:
    """``(kind, delta)`` of a robust data term ``none``, ``huber[:DELTA]`` or ``cauchy[:DELTA]`` (``DELTA`` > 0 in 0..1
    pixel units; None: :data:`ROBUST_DELTA`).

    Raises:
        ReddiffError: an unknown kind or a bad ``DELTA``.
    """
    text = str(spec).strip().lower()
    kind, sep, raw = text.partition(":")
    if kind not in ROBUST_TERMS or (kind == "none" and sep):
        raise ReddiffError(f"unknown robust data term {spec!r}; accepted: none, huber[:DELTA], cauchy[:DELTA] "
                           "(DELTA > 0 in 0..1 pixel units)")
    if not sep:
        return kind, None
    try:
        delta = float(raw)
    except ValueError:
        delta = math.nan
    if not (math.isfinite(delta) and 1e-4 <= delta <= 1):
        raise ReddiffError(f"bad robust data term {spec!r}: DELTA must be a number with 1e-4 <= DELTA <= 1 (0..1 "
                           "pixel units; a smaller one ignores the data)")
    return kind, delta


def robust_noise(spec: str, noise: NoiseModel) -> NoiseModel:
    """``noise`` with the robust data term ``spec`` (see :func:`parse_robust`); ``none`` returns it unchanged."""
    kind, delta = parse_robust(spec)
    if kind == "none":
        return noise
    return Robust(noise, kind, 2.0 * (ROBUST_DELTA if delta is None else delta))  # 0..1 -> [-1, 1] units
