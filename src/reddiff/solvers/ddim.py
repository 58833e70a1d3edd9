"""DDIM (Song, Meng & Ermon, ICLR 2021): unconditional sampling.

The generalised (non-Markovian) reverse step of DDIM, eq. 12 of the paper, in this library's VP notation
(``abar`` is the paper's ``alpha``):

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)        (eq. 16)

``eta = 0`` is the deterministic DDIM sampler and ``eta = 1`` is DDPM's ancestral sampler (posterior variance
``beta_tilde``) on the visited timesteps. The arithmetic (:func:`ddim_step`, :func:`ddim_sigma`) lives in
:mod:`reddiff.solvers.base`, where DPS and ΠGDM share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..params import Range, hyper
from ..schedule import TIMESTEP_SPACINGS
from .base import Callback, GeneratorLike, SampleContext, Sampler, ddim_sigma, ddim_step, decoding

if TYPE_CHECKING:  # pragma: no cover
    from ..prior import DiffusionPrior

__all__ = ["DDIM", "ddim_sigma", "ddim_step"]

STEPS = Range(low=1, integer=True)
UNIT = Range(low=0.0, high=1.0)
ETA_HELP = "η of the DDIM update (eq. 16): 0 deterministic DDIM, 1 ancestral DDPM"


def spacing_field() -> Any:
    """The ``timestep_spacing`` field every sampler declares (one definition)."""
    return hyper("linspace", "how a discrete schedule's steps are spread: linspace (evenly, both ends), leading "
                 "(0, k, 2k, ...: diffusers' default), trailing (ending at T-1), stride (range(0, T, k) with "
                 "k = T // steps, the official RED-diff code's grid: 334 steps when 300 are asked for)",
                 choices=TIMESTEP_SPACINGS)


@dataclass(frozen=True)
class DDIM(Sampler):
    """Unconditional DDIM sampling (Song et al. 2021, eq. 12); ignores the measurement.

    Called like every solver, ``DDIM()(prior, problem)`` draws one prior sample per measurement in ``problem``
    (only its batch size, shape, dtype and device are used); :meth:`sample` takes a shape instead. Any number of
    steps 1..T works; 1000 steps with ``eta = 1`` is DDPM.
    """

    steps: int = hyper(100, "number of reverse steps", range=STEPS)
    eta: float = hyper(0.0, ETA_HELP, range=UNIT)
    timestep_spacing: str = spacing_field()

    name = "ddim"
    label = "DDIM"
    latent_capable = True

    def grid(self, prior: DiffusionPrior) -> tuple[list, float]:
        """As every sampler's, with the prior's scheduler conventions (``steps_offset`` on the ``leading`` grid,
        ``final_abar``), so that DDIM on a diffusers prior is diffusers' ``DDIMScheduler``."""
        timesteps, _ = super().grid(prior)
        if self.timestep_spacing == "leading" and prior.steps_offset and prior.schedule.discrete:
            top = prior.num_timesteps - 1
            timesteps = [min(int(t) + prior.steps_offset, top) for t in timesteps]
        return timesteps, float(prior.final_abar)

    def step(self, ctx: SampleContext, x: torch.Tensor, t: int | float, a_t: float, a_prev: float):
        with torch.no_grad():
            eps, x0 = ctx.prior.predict(x, t)
        return self.ddim_update(ctx, x0, eps, a_t, a_prev), x0, {}

    def sample(
        self,
        prior: DiffusionPrior,
        shape: tuple[int, ...],
        generator: GeneratorLike = None,
        callback: Callback | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``shape[0]`` samples of shape ``shape[1:]`` from the prior.

        Args:
            prior: a :class:`reddiff.DiffusionPrior`.
            shape: ``(B, ...)``; for a :class:`reddiff.LatentPrior` the decoded images' shape (the latents are
                sampled with :meth:`run` on ``prior.latent_shape(shape)`` and decoded).
            generator: a ``torch.Generator``, one per sample, an integer seed, or None.
            callback: called with a :class:`StepInfo` after every step.
            dtype: dtype of the samples.
            device: device of the samples (default: CPU).
        """
        from ..latent import LatentPrior

        device = torch.device(device) if device is not None else torch.device("cpu")
        if isinstance(prior, LatentPrior):  # shape is the decoded one
            size = tuple(shape)[-2:] if len(shape) == 4 else None
            z = self.run(prior, None, prior.latent_shape(shape), generator, decoding(callback, prior, size),
                         dtype=dtype, device=device)
            with torch.no_grad():
                return prior.decode(z, size)
        return self.run(prior, None, tuple(shape), generator, callback, dtype=dtype, device=device)
