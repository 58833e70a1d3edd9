"""What every solver shares: the measured problem, per-step records, randomness and capability checks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SolverError

__all__ = ["Problem", "StepInfo", "Callback", "SolverRecord", "GeneratorLike", "per_sample_generators",
           "randn_like_per_sample", "require_capabilities", "check_finite"]

GeneratorLike = torch.Generator | Sequence[torch.Generator] | int | None


@dataclass(frozen=True)
class Problem:
    """A measurement ``y = A(x) + v`` with ``v ~ N(0, sigma_y^2 I)``.

    Args:
        y: the measurement, ``[B, ...]`` (batch first), in the operator's output units (pixels in [-1, 1]).
        operator: the forward model ``A`` (a :class:`reddiff.operators.Operator`).
        sigma_y: the noise standard deviation in the same [-1, 1] units as ``y`` (the CLI takes it in 0..1 pixel
            units and doubles it once).
        noise: optional :class:`reddiff.noise.NoiseModel`; when set, solvers take their data term from it
            (``None``: Gaussian with ``sigma_y``).
    """

    y: torch.Tensor
    operator: Any
    sigma_y: float = 0.0
    noise: Any = None

    def __post_init__(self) -> None:
        sigma_y = float(self.sigma_y)
        if not math.isfinite(sigma_y) or sigma_y < 0:
            raise SolverError(f"sigma_y must be a finite number >= 0, got {self.sigma_y}")
        object.__setattr__(self, "sigma_y", sigma_y)
        if not isinstance(self.y, torch.Tensor) or self.y.dim() < 1:
            raise SolverError("y must be a tensor with a batch dimension first")
        if not torch.isfinite(self.y).all():
            raise SolverError("the measurement y contains NaN or Inf values")

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
        t: the integer diffusion timestep of this step.
        x: the current estimate (detached; RED-diff's ``mu``, a sampler's ``x0`` prediction).
        losses: scalar loss terms by name (e.g. ``{"loss": ..., "reg": ..., "obs": ...}``).
    """

    step: int
    num_steps: int
    t: int
    x: torch.Tensor
    losses: dict[str, float] = field(default_factory=dict)


Callback = Callable[[StepInfo], None]


class SolverRecord:
    """Mixin of the solver dataclasses: ``to_dict()``, the fields as a JSON-serialisable run record."""

    name = "solver"

    def to_dict(self) -> dict[str, Any]:
        """The solver's name and fields as a JSON-serialisable dict (the run record)."""
        from dataclasses import asdict

        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[arg-type]
        return {"solver": self.name, **fields}


def per_sample_generators(generator: GeneratorLike, batch: int, device: torch.device) -> list[torch.Generator]:
    """The noise streams of a batch.

    Args:
        generator: ``None`` (a fresh, nondeterministic stream), an integer seed (one CPU generator seeded with it),
            one generator (the whole batch's noise is drawn from
            it at once: deterministic and fast, but a sample's draws depend on its position in the batch), or a
            sequence of ``batch`` generators, one per sample (a sample's result then does not depend on the batch
            it ran in; what the CLI uses, one per image).
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


def require_capabilities(solver: str, operator: Any, needs: Sequence[str]) -> None:
    """Raise one clear error when ``operator`` lacks a method or property the solver needs.

    Args:
        solver: the solver's name, for the message.
        operator: the operator to check.
        needs: attribute names (``"A_dagger"``, ``"A_adjoint"``, ``"singulars"``, ...).
    """
    missing = [name for name in needs if not callable(getattr(operator, name, None))]
    if missing:
        name = getattr(operator, "task", type(operator).__name__)
        raise SolverError(
            f"{solver} cannot use operator {name!r}: it does not provide {', '.join(missing)}"
        )


def check_finite(solver: str, step: int, t: int, value: torch.Tensor, what: str, hint: str) -> None:
    """Stop with an error naming the step when ``value`` has NaN or Inf entries."""
    if not bool(torch.isfinite(value).all()):
        raise SolverError(f"{solver} diverged at step {step} (t={t}): the {what} is not finite; {hint}")
