"""Diffusion priors: an ε-prediction network together with its noise schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ReddiffError
from .schedule import VPSchedule

__all__ = ["DiffusionPrior", "load_prior"]


class DiffusionPrior(nn.Module):
    """A pretrained diffusion model used as a prior: ``predict(x_t, t) -> (eps, x0)``.

    The prior owns the network and the schedule, so solvers never slice network outputs or look up ``abar``
    themselves. Learned-σ networks (guided-diffusion's ``learn_sigma=True``, 2C output channels of which the
    first C are ε) are handled here by configuration. How the network runs (precision, memory format, compilation,
    evaluation counting) is not the prior's concern: see :mod:`reddiff.runtime`.

    Images whose height or width is not a multiple of ``network.size_multiple`` are padded (reflect, or
    replicate where the image is too small to reflect) to the next multiple before the network and cropped back
    afterwards, so any image size works. Tensors that are not images (``[B, d]`` vectors, ...) are passed through
    unchanged.

    Args:
        network: callable ``network(x_t, t) -> eps`` with ``x_t`` of shape ``[B, ...]`` and integer ``t`` of
            shape ``[B]``.
        schedule: the VP schedule the network was trained with (default: linear betas, T = 1000).
        learned_sigma: the network outputs 2C channels, of which the first C are ε.
        info: free-form provenance (name, path, sha256, config) recorded in run files.
        data_range: ``(low, high)`` bounds of every coordinate of the clean data (images: ``(-1, 1)``, the
            default), or None when the data are unbounded. ``E[x0 | x_t]`` lies within the same bounds, so samplers
            may clip their Tweedie estimates to them (ΠGDM does by default).
    """

    def __init__(
        self,
        network: nn.Module | Callable[..., torch.Tensor],
        schedule: VPSchedule | None = None,
        learned_sigma: bool = False,
        info: dict[str, Any] | None = None,
        data_range: tuple[float, float] | None = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        self.network = network
        self.schedule = schedule if schedule is not None else VPSchedule()
        self.learned_sigma = bool(learned_sigma)
        self.info: dict[str, Any] = dict(info or {})
        if data_range is not None:
            low, high = (float(v) for v in data_range)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ReddiffError(f"data_range must be two finite numbers low < high or None, got {data_range!r}")
            data_range = (low, high)
        self.data_range: tuple[float, float] | None = data_range
        self.register_buffer("abar", self.schedule.abar.clone(), persistent=False)

    # -- schedule helpers ------------------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        """T, the number of discrete timesteps of the schedule."""
        return self.schedule.num_timesteps

    def abar_at(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` as a tensor broadcastable against ``like`` (``[B, 1, 1, ...]``), in ``like``'s dtype."""
        t = torch.as_tensor(t, device=self.abar.device).long().reshape(-1)
        a = self.schedule.abar.to(device=like.device)[t.to(like.device)].to(like.dtype)
        return a.reshape(-1, *([1] * (like.dim() - 1)))

    # -- the network -----------------------------------------------------------------------------------------
    def _network_dtype(self, x: torch.Tensor) -> torch.dtype:
        if isinstance(self.network, nn.Module):
            for p in self.network.parameters():
                return p.dtype
        return x.dtype

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The network's noise prediction ``eps_theta(x_t, t)``, in ``x_t``'s dtype and shape.

        Args:
            x_t: noisy input ``[B, ...]``.
            t: integer timestep(s), a scalar or ``[B]``.
        """
        batch = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ReddiffError(f"got {t.numel()} timesteps for a batch of {batch}")
        inp = x_t.to(self._network_dtype(x_t))
        crop = None
        multiple = int(getattr(self.network, "size_multiple", 1) or 1)
        if x_t.dim() == 4 and multiple > 1:
            h, w = x_t.shape[-2:]
            ph, pw = (-h) % multiple, (-w) % multiple
            if ph or pw:
                mode = "reflect" if ph < h and pw < w else "replicate"
                inp = F.pad(inp, (0, pw, 0, ph), mode=mode)
                crop = (h, w)
        out = self.network(inp, t)
        if self.learned_sigma:
            out = out[:, : x_t.shape[1]]
        if crop is not None:
            out = out[..., : crop[0], : crop[1]]
        if out.shape != x_t.shape:
            raise ReddiffError(
                f"the network returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; "
                "set learned_sigma=True for networks that also predict variances"
            )
        return out.to(x_t.dtype)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """ε and the Tweedie estimate ``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.

        Gradients flow through the network unless the caller wraps this in ``torch.no_grad()``.

        Returns:
            ``(eps, x0)``, both shaped like ``x_t``.
        """
        eps = self.eps(x_t, t)
        abar = self.abar_at(t, x_t).expand(x_t.shape[0], *([1] * (x_t.dim() - 1)))
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        return eps, x0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`predict`."""
        return self.predict(x_t, t)

    def noise(self, x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """The forward process: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``."""
        abar = self.abar_at(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def load_prior(
    spec: str | Path,
    config: dict[str, Any] | str | Path | None = None,
    device: torch.device | str | None = None,
    *,
    progress: bool = True,
) -> DiffusionPrior:
    """Load a diffusion prior by name or from a checkpoint file.

    Args:
        spec: a named prior (``reddiff list priors``: ``imagenet256-uncond``, ``ffhq256``, downloaded to the cache
            on first use) or a path to a guided-diffusion ``.pt`` checkpoint or a reddiff ``.safetensors`` export.
        config: guided-diffusion ``create_model`` arguments (a dict, or a path to a JSON file). ``None``: the named
            prior's own, the JSON beside a ``.safetensors`` export, or inferred from the state dict.
        device: where to put the network (default: CPU).
        progress: show a progress bar while downloading.

    Returns:
        The prior; ``prior.network`` is the raw network and ``prior.info`` its provenance (name, path, sha256,
        config).
    """
    from .networks.loading import load_network

    if not isinstance(spec, str | Path) or not str(spec).strip():
        raise ReddiffError(f"prior must be a name (see `reddiff list priors`) or a checkpoint path, got {spec!r}")
    network, info = load_network(spec, config, progress=progress)
    prior = DiffusionPrior(network, VPSchedule(), learned_sigma=bool(info.get("learned_sigma")), info=info)
    if device is not None:
        prior = prior.to(device)
    return prior
