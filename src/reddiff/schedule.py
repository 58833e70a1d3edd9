"""The variance-preserving (VP / DDPM) noise schedule, kept in float64.

Forward process (DDPM, Ho et al. 2020, eq. 4): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with
``abar_t = prod_{s <= t} (1 - beta_s)`` and integer ``t`` in ``0 .. T-1`` (guided-diffusion's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import ReddiffError

BETA_SCHEDULES = ("linear", "cosine")
TIMESTEP_ORDERS = ("descending", "ascending", "random")


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


@dataclass(frozen=True)
class VPSchedule:
    """A discrete VP schedule.

    Attributes:
        kind: ``"linear"`` or ``"cosine"``.
        num_timesteps: T (1000 for the public checkpoints).
        betas: float64 [T].
        abar: float64 [T], ``abar_t = prod_{s<=t}(1 - beta_s)``.
    """

    kind: str = "linear"
    num_timesteps: int = 1000
    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    abar: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in BETA_SCHEDULES:
            raise ReddiffError(f"unknown beta schedule {self.kind!r}; accepted: {', '.join(BETA_SCHEDULES)}")
        if int(self.num_timesteps) < 1:
            raise ReddiffError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        betas = linear_betas(self.num_timesteps) if self.kind == "linear" else cosine_betas(self.num_timesteps)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "abar", torch.cumprod(1.0 - betas, dim=0))

    @property
    def sigmas(self) -> torch.Tensor:
        """``sqrt(1 - abar_t) / sqrt(abar_t)``: the noise-to-signal ratio (inverse square-root SNR), float64 [T]."""
        return ((1 - self.abar) / self.abar).sqrt()

    def timesteps(
        self,
        num_steps: int,
        order: str = "descending",
        generator: torch.Generator | None = None,
        t_max: int | None = None,
        allow_repeats: bool = False,
    ) -> torch.Tensor:
        """The ``num_steps`` integer timesteps visited by a sampler (respacing).

        Evenly spaced over ``0 .. T-1`` including both ends (``num_steps = T`` gives every timestep;
        ``num_steps = 1`` gives ``T - 1``), then ordered.

        Args:
            num_steps: how many timesteps, 1 .. T.
            order: ``descending`` (T-1 ... 0, the default and the paper's best), ``ascending``, or ``random``
                (a permutation drawn from ``generator``).
            generator: randomness for ``order="random"``.
            t_max: the largest timestep (default ``T - 1``): the steps are spread over ``0 .. t_max``.
            allow_repeats: allow more steps than timesteps in ``0 .. t_max`` (some are then visited twice in a row;
                fine for RED-diff's stochastic optimisation, not for samplers).

        Returns:
            int64 tensor [num_steps].
        """
        if order not in TIMESTEP_ORDERS:
            raise ReddiffError(f"unknown timestep order {order!r}; accepted: {', '.join(TIMESTEP_ORDERS)}")
        top = self.num_timesteps - 1 if t_max is None else int(t_max)
        if not 0 <= top < self.num_timesteps:
            raise ReddiffError(f"t_max must be between 0 and {self.num_timesteps - 1}, got {t_max}")
        if int(num_steps) < 1 or (int(num_steps) > top + 1 and not allow_repeats):
            raise ReddiffError(f"steps must be between 1 and {top + 1}, got {num_steps}")
        if num_steps == 1:
            ts = torch.tensor([top], dtype=torch.int64)
        else:
            ts = torch.linspace(0, top, num_steps, dtype=torch.float64).round().long()
        if order == "descending":
            return ts.flip(0)
        if order == "ascending":
            return ts
        perm = torch.randperm(num_steps, generator=generator)
        return ts[perm]

    def to_dict(self) -> dict:
        """JSON-serialisable description (for run records and exported configs)."""
        return {"kind": self.kind, "num_timesteps": self.num_timesteps}
