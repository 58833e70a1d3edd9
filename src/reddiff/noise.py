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

All three return a ``[B]`` tensor and are differentiable in ``Ax``. Units: pixels in [-1, 1], as everywhere inside
the library.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from reddiff.errors import ReddiffError

__all__ = ["NoiseModel", "GaussianNoise", "PoissonNoise", "parse_noise", "NOISE_MODELS"]

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
