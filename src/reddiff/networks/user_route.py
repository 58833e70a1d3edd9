"""User priors: ``--prior my_model.py:make`` or ``--prior package.module:make``.

The function is called once with no arguments and returns one of

* a :class:`reddiff.DiffusionPrior` (network, schedule, prediction type and data range, all declared);
* a dict with the keys ``network`` (a callable ``network(x, time)``), ``prediction`` (``epsilon``, ``sample``,
  ``v_prediction``, ``edm`` or ``flow``), ``schedule`` (a :class:`reddiff.schedule.NoiseSchedule`) and
  ``data_range`` (``(low, high)``, e.g. ``(-1, 1)`` for images, or None for unbounded data: it must be said), and
  optionally ``learned_sigma``, ``network_time`` and ``name``;
* or an EDM-style denoiser ``D(x, sigma)`` (any callable returning the clean estimate at noise level ``sigma``,
  Karras et al. 2022) with a ``data_range`` attribute: it runs on :class:`reddiff.schedule.EDMSchedule`.

Whatever it returns, the network is guarded: an exception inside it, an output of the wrong shape, or NaN/Inf in its
output stops the run with one line naming the module (and the solver step).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UserCodeError
from ..usercode import load_factory
from .loading import file_sha256

__all__ = ["GuardedNetwork", "load_user_prior"]

_KEYS = ("network", "prediction", "schedule", "data_range")


class GuardedNetwork(nn.Module):
    """A user's network whose failures become one :class:`UserCodeError` naming it.

    Args:
        network: the user's callable ``network(x, time)``.
        where: the spec, quoted, for messages.
    """

    def __init__(self, network: Callable[..., torch.Tensor], where: str) -> None:
        super().__init__()
        self.inner = network
        self.where = where
        multiple = getattr(network, "size_multiple", None)
        if multiple is not None:
            if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
                raise CheckpointError(f"user prior {where}: size_multiple must be a positive integer, got "
                                      f"{multiple!r}")
            self.size_multiple = multiple

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        try:
            out = self.inner(x, time)
        except Exception as exc:  # noqa: BLE001 - any error of user code becomes one clear message
            raise UserCodeError(f"user prior {self.where}: its network raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, torch.Tensor) or out.dim() != x.dim() or out.shape[0] != x.shape[0] or \
                out.shape[2:] != x.shape[2:]:
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserCodeError(f"user prior {self.where}: its network returned {got} for an input "
                                f"{list(x.shape)}; it must return a tensor shaped like its input")
        if not bool(torch.isfinite(out).all()):
            raise UserCodeError(f"user prior {self.where}: its network returned NaN or Inf for an input "
                                f"{list(x.shape)} at time {time.reshape(-1)[0].item():g}")
        return out


def load_user_prior(spec: str, device: torch.device | str | None = None) -> Any:
    """The :class:`reddiff.DiffusionPrior` a user's function makes (see the module docstring).

    Raises:
        CheckpointError: one line for every kind of broken module: missing file or function, an exception while
            importing or calling it, a return value of the wrong kind, a missing key or data range.
    """
    from ..prior import DiffusionPrior
    from ..schedule import EDMSchedule, NoiseSchedule

    factory, func_name, where = load_factory(spec, "user prior", CheckpointError)
    try:
        made = factory()
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"user prior {where}: {func_name}() raised {type(exc).__name__}: {exc}") from None
    source = str(Path(spec.strip().rpartition(":")[0]).expanduser())
    info = {"name": spec.strip(), "route": "user", "path": None,
            "sha256": file_sha256(source) if source.lower().endswith(".py") else None}
    if isinstance(made, DiffusionPrior):
        made.network = GuardedNetwork(made.network, where)
        made.info = {**info, **made.info}
        prior = made
    elif isinstance(made, dict):
        missing = [k for k in _KEYS if k not in made]
        if missing:
            raise CheckpointError(f"user prior {where}: the dict {func_name}() returned lacks {', '.join(missing)} "
                                  f"(needed: {', '.join(_KEYS)}; data_range may be None for unbounded data)")
        if not callable(made["network"]):
            raise CheckpointError(f"user prior {where}: 'network' must be a callable network(x, time), got "
                                  f"{type(made['network']).__name__}")
        if not isinstance(made["schedule"], NoiseSchedule):
            raise CheckpointError(f"user prior {where}: 'schedule' must be a reddiff.schedule.NoiseSchedule, got "
                                  f"{type(made['schedule']).__name__}")
        prior = _prior(DiffusionPrior, GuardedNetwork(made["network"], where), made["schedule"], made, where,
                       {**info, "name": made.get("name", info["name"])})
    elif callable(made):
        if not hasattr(made, "data_range"):
            raise CheckpointError(f"user prior {where}: the denoiser {func_name}() returned must say its data range: "
                                  "set its attribute data_range to (low, high), e.g. (-1, 1), or None")
        prior = _prior(DiffusionPrior, GuardedNetwork(made, where), EDMSchedule(),
                       {"prediction": "edm", "data_range": made.data_range}, where, info)
    else:
        raise CheckpointError(f"user prior {where}: {func_name}() must return a DiffusionPrior, a dict with "
                              f"{', '.join(_KEYS)}, or a denoiser D(x, sigma); got {type(made).__name__}")
    return prior.to(device) if device is not None else prior


def _prior(cls: type, network: nn.Module, schedule: Any, settings: dict[str, Any], where: str,
           info: dict[str, Any]) -> Any:
    from ..errors import ReddiffError

    network_time = settings.get("network_time")
    if network_time is not None and not callable(network_time):
        raise CheckpointError(f"user prior {where}: network_time must be a function of the schedule's time or None, "
                              f"got {type(network_time).__name__}")
    try:
        return cls(network, schedule, learned_sigma=bool(settings.get("learned_sigma", False)), info=info,
                   data_range=settings["data_range"], prediction=settings["prediction"],
                   network_time=network_time)
    except ReddiffError as exc:
        raise CheckpointError(f"user prior {where}: {exc}") from None
