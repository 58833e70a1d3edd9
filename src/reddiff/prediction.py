"""What a network predicts, and its conversion to the noise ``eps`` and the clean estimate ``x0``.

With ``x_t = alpha x0 + sigma eps`` (the schedule's own variables), a network's output is one of:

* ``epsilon``: ``eps`` (DDPM, ADM);
* ``sample``: ``x0`` (diffusers' name; also ``x0``);
* ``v_prediction``: ``v = alpha eps - sigma x0`` (Salimans & Ho 2022; also ``v``), so
  ``x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)``, ``eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)``;
* ``edm``: a denoiser ``D(x; s) = x0`` called on the variance-exploding variable ``x = x_t / alpha`` at the noise
  level ``s = sigma / alpha`` (Karras et al. 2022);
* ``flow``: a velocity ``v = eps - x0`` (rectified flow; also ``velocity``), so ``x0 = (x_t - sigma v) / (alpha +
  sigma)``.

Conversions run in float64 (the caller casts back), since some divide by small numbers (``eps`` from ``x0`` divides by
``sigma``, small at low noise; ``x0`` from ``eps`` by ``alpha``, small at high noise).
"""

from __future__ import annotations

from torch import Tensor

from .errors import ReddiffError

__all__ = ["PREDICTIONS", "canonical_prediction", "to_eps_x0", "from_eps_x0", "network_input"]

PREDICTIONS = ("epsilon", "sample", "v_prediction", "edm", "flow")
_ALIASES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction", "velocity": "flow", "flow_prediction": "flow"}


def canonical_prediction(kind: str) -> str:
    """The canonical name of a prediction type (aliases accepted); an unknown one is an error listing them."""
    name = _ALIASES.get(str(kind).lower(), str(kind).lower())
    if name not in PREDICTIONS:
        accepted = ", ".join([*PREDICTIONS, *_ALIASES])
        raise ReddiffError(f"unknown prediction type {kind!r}; accepted: {accepted}")
    return name


def to_eps_x0(kind: str, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``(eps, x0)`` from a network output ``out`` at ``x_t`` (float64 in, float64 out; ``alpha``, ``sigma``
    broadcast against ``x_t``)."""
    if kind == "epsilon":
        return out, (x_t - sigma * out) / alpha
    if kind in ("sample", "edm"):
        return (x_t - alpha * out) / sigma, out
    if kind == "v_prediction":
        norm = alpha * alpha + sigma * sigma
        return (sigma * x_t + alpha * out) / norm, (alpha * x_t - sigma * out) / norm
    if kind == "flow":
        x0 = (x_t - sigma * out) / (alpha + sigma)
        return out + x0, x0
    raise ReddiffError(f"unknown prediction type {kind!r}; accepted: {', '.join(PREDICTIONS)}")


def from_eps_x0(kind: str, eps: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The output a network of type ``kind`` gives for the exact ``(eps, x0)`` (the inverse of :func:`to_eps_x0`)."""
    if kind == "epsilon":
        return eps
    if kind in ("sample", "edm"):
        return x0
    if kind == "v_prediction":
        return alpha * eps - sigma * x0
    if kind == "flow":
        return eps - x0
    raise ReddiffError(f"unknown prediction type {kind!r}; accepted: {', '.join(PREDICTIONS)}")


def network_input(kind: str, x_t: Tensor, alpha: Tensor, sigma: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
    """What the network is called with: ``(x_t, time)``, or for ``edm`` ``(x_t / alpha, sigma / alpha)``."""
    if kind == "edm":
        return x_t / alpha, (sigma / alpha).reshape(-1)
    return x_t, time

