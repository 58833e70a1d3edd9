"""How a prior's network runs: precision (autocast), memory format, ``torch.compile``, and counting evaluations.

These are runtime choices, not part of the maths of a prior: :class:`reddiff.DiffusionPrior` calls
``prior.network(x, t)``, and :func:`use_runtime` wraps that network in a :class:`RuntimeNetwork` that applies the
choices of a :class:`Runtime` and counts its calls. Results stay close to fp32 (see ``reddiff bench``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import ReddiffError

__all__ = ["PRECISIONS", "Runtime", "RuntimeNetwork", "use_runtime", "runtime_of", "count_evals", "EvalCount"]

#: Network precisions: name -> autocast dtype (None: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """The network's fast paths (each on or off; recorded in run files).

    Args:
        precision: ``fp32`` (default), ``bf16`` or ``fp16``: autocast of the network forward only; inputs, outputs,
            the solver's variables and optimizer state stay in their own dtype (fp32).
        channels_last: run the network in channels-last memory format (faster convolutions on GPUs).
        compile: ``torch.compile`` the network (the first call compiles; pays off over many steps).
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ReddiffError(f"unknown precision {self.precision!r}; accepted: {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        return asdict(self)


class RuntimeNetwork(nn.Module):
    """A network run with a :class:`Runtime`'s fast paths; counts its evaluations in :attr:`num_evals`.

    Attributes the network has (``size_multiple``, ``in_channels``, ``config``, ...) are read through the wrapper.

    Args:
        network: the wrapped network ``network(x_t, t)`` (a module or any callable).
        runtime: the fast paths.
    """

    def __init__(self, network: Any, runtime: Runtime) -> None:
        super().__init__()
        self.inner = network
        self.runtime = runtime
        #: number of network evaluations so far (one per batch call).
        self.num_evals = 0
        if runtime.channels_last and isinstance(network, nn.Module):
            network.to(memory_format=torch.channels_last)
        object.__setattr__(self, "_call", torch.compile(network) if runtime.compile else network)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"] if "inner" in self._modules else self.__dict__["inner"], name)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.runtime.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.runtime.precision]
        with torch.autocast(device_type=x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = self._call(x, t)
        self.num_evals += 1
        return out


def _wrapper(prior: Any) -> RuntimeNetwork | None:
    net = prior.network
    return net if isinstance(net, RuntimeNetwork) else None


def _set_network(prior: Any, network: Any) -> None:
    """Replace ``prior.network`` (a submodule, or a plain callable attribute) by ``network``."""
    if isinstance(prior, nn.Module) and "network" in prior._modules and not isinstance(network, nn.Module):
        del prior._modules["network"]
    prior.network = network


def use_runtime(prior: Any, runtime: Runtime | None = None) -> Any:
    """Run ``prior``'s network with ``runtime``'s fast paths (replacing earlier ones) and count its evaluations.

    Args:
        prior: a :class:`reddiff.DiffusionPrior`.
        runtime: the fast paths (default: none, fp32).

    Returns:
        ``prior`` (changed in place).
    """
    wrapper = _wrapper(prior)
    _set_network(prior, RuntimeNetwork(wrapper.inner if wrapper is not None else prior.network, runtime or Runtime()))
    return prior


def runtime_of(prior: Any) -> Runtime:
    """The fast paths ``prior`` runs with (fp32 and none when :func:`use_runtime` was never called)."""
    wrapper = _wrapper(prior)
    return wrapper.runtime if wrapper is not None else Runtime()


class EvalCount:
    """The network evaluations of a block so far (see :func:`count_evals`)."""

    def __init__(self, wrapper: RuntimeNetwork) -> None:
        self._wrapper = wrapper
        self._start = wrapper.num_evals

    @property
    def count(self) -> int:
        """Evaluations since the block started."""
        return self._wrapper.num_evals - self._start


@contextlib.contextmanager
def count_evals(prior: Any) -> Iterator[EvalCount]:
    """Count ``prior``'s network evaluations in a block (wrapping the network for the block if it is not yet)."""
    wrapper = _wrapper(prior)
    if wrapper is not None:
        yield EvalCount(wrapper)
        return
    original = prior.network
    use_runtime(prior)
    try:
        yield EvalCount(prior.network)
    finally:
        _set_network(prior, original)
