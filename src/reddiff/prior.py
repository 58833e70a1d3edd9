"""Diffusion priors: a denoising network, what it predicts, and its noise schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ReddiffError
from .prediction import canonical_prediction, network_input, to_eps_x0
from .schedule import NoiseSchedule, VPSchedule

__all__ = ["DiffusionPrior", "load_prior"]


class DiffusionPrior(nn.Module):
    """A pretrained diffusion model used as a prior: ``predict(x_t, t) -> (eps, x0)``.

    The prior owns the network, the noise schedule (any family: VP, VE/EDM, rectified flow, ...; see
    :mod:`reddiff.schedule`) and what the network predicts (``epsilon``, ``sample``, ``v_prediction``, ``edm``,
    ``flow``; see :mod:`reddiff.prediction`), so solvers never slice network outputs or convert parameterisations
    themselves. Learned-σ networks (2C output channels of which the first C are the prediction) are handled here by
    configuration. How the network runs (precision, memory format, compilation, evaluation counting) is not the
    prior's concern: see :mod:`reddiff.runtime`.

    Solvers speak the VP-equivalent variable: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with ``abar_t =
    schedule.abar_of(t)``. The prior hands the network ``x_t * schedule.scale_of(t)``, the schedule's own variable
    ``alpha_t x0 + sigma_t eps`` (the same for VP, where the scale is 1), with the time as the network expects it
    (``network_time(t)``; an ``edm`` denoiser gets ``x_t / alpha_t`` and ``sigma_t / alpha_t``).

    Images whose height or width is not a multiple of ``network.size_multiple`` are padded (reflect, or
    replicate where the image is too small to reflect) to the next multiple before the network and cropped back
    afterwards, so any image size works. Tensors that are not images (``[B, d]`` vectors, ...) are passed through
    unchanged.

    Args:
        network: callable ``network(x, time) -> prediction`` with ``x`` of shape ``[B, ...]`` and ``time`` of shape
            ``[B]``.
        schedule: the noise schedule the network was trained with (default: VP, linear betas, T = 1000).
        learned_sigma: the network outputs 2C channels, of which the first C are the prediction.
        info: free-form provenance (name, path, sha256, config) recorded in run files.
        data_range: ``(low, high)`` bounds of every coordinate of the clean data (images: ``(-1, 1)``, the
            default), or None when the data are unbounded. ``E[x0 | x_t]`` lies within the same bounds, so samplers
            may clip their Tweedie estimates to them (ΠGDM does by default).
        prediction: what the network predicts (default ``epsilon``).
        network_time: maps the schedule's times (for ``edm``: the noise level ``sigma / alpha``) to the network's
            time input (default: unchanged; e.g. ``t * 1000`` for diffusers' flow models, ``log(sigma) / 4`` for
            an EDM network that takes c_noise).
        clip_denoised: clamp ``x0`` to ``data_range`` in :meth:`predict` and recompute ``eps`` from it (diffusers'
            ``clip_sample`` as its DDPM scheduler and ADM apply it; diffusers' DDIM scheduler keeps the unclipped
            ``eps`` unless ``use_clipped_model_output``).
    """

    #: DDIM's conventions from the scheduler config a diffusers prior came with (:class:`reddiff.DDIM` follows them,
    #: as diffusers' ``DDIMScheduler`` does): added to the ``leading`` timesteps (``steps_offset``; Stable
    #: Diffusion's pipelines use 1), and the ``abar`` the last step goes to (1: the clean estimate; with
    #: ``set_alpha_to_one`` false, ``abar`` at t = 0).
    steps_offset: int = 0
    final_abar: float = 1.0

    def __init__(
        self,
        network: nn.Module | Callable[..., torch.Tensor],
        schedule: NoiseSchedule | None = None,
        learned_sigma: bool = False,
        info: dict[str, Any] | None = None,
        data_range: tuple[float, float] | None = (-1.0, 1.0),
        prediction: str = "epsilon",
        network_time: Callable[[torch.Tensor], torch.Tensor] | None = None,
        clip_denoised: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.schedule = schedule if schedule is not None else VPSchedule()
        if not isinstance(self.schedule, NoiseSchedule):
            raise ReddiffError(f"schedule must be a reddiff NoiseSchedule, got {type(self.schedule).__name__}")
        self.learned_sigma = bool(learned_sigma)
        self.prediction = canonical_prediction(prediction)
        self.network_time = network_time
        self.info: dict[str, Any] = dict(info or {})
        if data_range is not None:
            try:
                low, high = (float(v) for v in data_range)
            except (TypeError, ValueError):
                low = high = math.nan
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ReddiffError(f"data_range must be two finite numbers low < high or None, got {data_range!r}")
            data_range = (low, high)
        if network_time is not None and not callable(network_time):
            raise ReddiffError(f"network_time must be a function of the schedule's time or None, got "
                               f"{type(network_time).__name__}")
        self.data_range: tuple[float, float] | None = data_range
        self.clip_denoised = bool(clip_denoised)
        if self.clip_denoised and data_range is None:
            raise ReddiffError("clip_denoised needs a data_range to clip to")
        #: today's exact VP ε path: integer timesteps, ε from the network, x0 in the input's dtype.
        self._vp_eps = isinstance(self.schedule, VPSchedule) and self.prediction == "epsilon" and network_time is None

    def describe(self) -> dict[str, Any]:
        """Family, prediction type and schedule, for run records."""
        return {"family": self.schedule.family, "prediction": self.prediction, "schedule": self.schedule.to_dict(),
                "learned_sigma": self.learned_sigma, "data_range": self.data_range, "clip_denoised": self.clip_denoised}

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the prior in a result's settings (whether an earlier result can be reused)."""
        return {"prior_sha256": self.info.get("sha256")}

    # -- schedule helpers ------------------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        """T, the number of discrete timesteps of a discrete schedule."""
        return self.schedule.num_timesteps  # type: ignore[attr-defined]

    def _times(self, t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        dtype = torch.int64 if self.schedule.discrete else torch.float64
        t = torch.as_tensor(t, device=device)
        t = (t.long() if dtype == torch.int64 else t.to(dtype)).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ReddiffError(f"got {t.numel()} timesteps for a batch of {batch}")
        return t

    def _levels(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` float64, shaped ``[B, 1, 1, ...]`` against ``like``."""
        a, s = self.schedule.alpha_sigma(t.cpu())
        shape = (-1, *([1] * (like.dim() - 1)))
        return a.reshape(shape).to(like.device), s.reshape(shape).to(like.device)

    def abar_at(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """The VP-equivalent ``abar_t`` as a tensor broadcastable against ``like`` (``[B, 1, 1, ...]``), in
        ``like``'s dtype."""
        if isinstance(self.schedule, VPSchedule):
            t = torch.as_tensor(t).long().reshape(-1)
            a = self.schedule.abar.to(device=like.device)[t.to(like.device)].to(like.dtype)
            return a.reshape(-1, *([1] * (like.dim() - 1)))
        alpha, sigma = self._levels(torch.as_tensor(t).reshape(-1), like)
        return (alpha * alpha / (alpha * alpha + sigma * sigma)).to(like.dtype)

    # -- the network -----------------------------------------------------------------------------------------
    def _network_dtype(self, x: torch.Tensor) -> torch.dtype:
        if isinstance(self.network, nn.Module):
            for p in self.network.parameters():
                return p.dtype
        return x.dtype

    def _call(self, x: torch.Tensor, time: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The network on ``x`` (padded to its size multiple and cropped back), its prediction ``[B, ...]``."""
        inp = x.to(self._network_dtype(x))
        crop = None
        multiple = int(getattr(self.network, "size_multiple", 1) or 1)
        if x.dim() == 4 and multiple > 1:
            h, w = x.shape[-2:]
            ph, pw = (-h) % multiple, (-w) % multiple
            if ph or pw:
                mode = "reflect" if ph < h and pw < w else "replicate"
                inp = F.pad(inp, (0, pw, 0, ph), mode=mode)
                crop = (h, w)
        out = self.network(inp, time)
        if self.learned_sigma:
            out = out[:, : like.shape[1]]
        if crop is not None:
            out = out[..., : crop[0], : crop[1]]
        if out.shape != like.shape:
            raise ReddiffError(
                f"the network returned shape {tuple(out.shape)} for input {tuple(like.shape)}; "
                "set learned_sigma=True for networks that also predict variances"
            )
        return out

    def _general(self, x_t: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps, x0)`` for any family and prediction type, converted in float64."""
        times = self._times(t, x_t.shape[0], x_t.device)
        alpha, sigma = self._levels(times, x_t)
        scale = (alpha * alpha + sigma * sigma).sqrt()
        x_fam = x_t.to(torch.float64) * scale
        x_in, time = network_input(self.prediction, x_fam, alpha, sigma, times)
        if self.network_time is not None:
            time = self.network_time(time)
        out = self._call(x_in.to(x_t.dtype), time, x_t)
        eps, x0 = to_eps_x0(self.prediction, out.to(torch.float64), x_fam, alpha, sigma)
        return eps.to(x_t.dtype), x0.to(x_t.dtype)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The noise prediction ``eps_theta(x_t, t)``, in ``x_t``'s dtype and shape.

        Args:
            x_t: noisy input ``[B, ...]`` in the VP-equivalent variable.
            t: timestep(s) of the schedule, a scalar or ``[B]``.
        """
        if self._vp_eps:
            return self._call(x_t, self._times(t, x_t.shape[0], x_t.device), x_t).to(x_t.dtype)
        return self._general(x_t, t)[0]

    def predict(self, x_t: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """ε and the Tweedie estimate ``x0`` (for ε-networks ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``).

        Gradients flow through the network unless the caller wraps this in ``torch.no_grad()``. With
        ``clip_denoised``, ``x0`` is clamped to the data range and ``eps`` recomputed from it.

        Returns:
            ``(eps, x0)``, both shaped like ``x_t``.
        """
        if self._vp_eps:
            eps = self.eps(x_t, t)
            abar = self.abar_at(t, x_t).expand(x_t.shape[0], *([1] * (x_t.dim() - 1)))
            x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        else:
            eps, x0 = self._general(x_t, t)
        if self.clip_denoised:  # a consistent pair: eps recomputed from the clipped x0 (as ADM and DDPM do)
            x0 = x0.clamp(*self.data_range)  # type: ignore[misc]
            abar = self.abar_at(t, x_t.to(torch.float64)).expand(x_t.shape[0], *([1] * (x_t.dim() - 1)))
            eps = ((x_t.to(torch.float64) - abar.sqrt() * x0.to(torch.float64)) / (1 - abar).sqrt()).to(x_t.dtype)
        return eps, x0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`predict`."""
        return self.predict(x_t, t)

    def noise(self, x0: torch.Tensor, t: torch.Tensor | float, eps: torch.Tensor) -> torch.Tensor:
        """The forward process in the VP-equivalent variable: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``."""
        abar = self.abar_at(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def load_prior(
    spec: str | Path,
    config: dict[str, Any] | str | Path | None = None,
    device: torch.device | str | None = None,
    *,
    progress: bool = True,
    prompt: str | None = None,
    guidance: float | None = None,
) -> DiffusionPrior:
    """Load a diffusion prior by name or from a checkpoint file.

    Args:
        spec: a named prior (``reddiff list priors``: ``imagenet256-uncond``, ``ffhq256``, downloaded to the cache
            on first use), a path to a guided-diffusion ``.pt`` checkpoint or a reddiff ``.safetensors`` export, or
            ``diffusers:FOLDER_OR_HUB_ID`` (a diffusers ``UNet2DModel`` with its scheduler config; see
            :mod:`reddiff.networks.diffusers_route`), ``sd:FOLDER_OR_HUB_ID`` (a Stable-Diffusion-style latent
            pipeline: a :class:`reddiff.LatentPrior`, see :mod:`reddiff.networks.latent_route`; ``diffusers:``
            reads such a pipeline the same way), or ``file.py:function`` / ``module:function``, your own code
            returning a prior (see :mod:`reddiff.networks.user_route`).
        config: guided-diffusion ``create_model`` arguments (a dict, or a path to a JSON file). ``None``: the named
            prior's own, the JSON beside a ``.safetensors`` export, or inferred from the state dict.
        device: where to put the network (default: CPU).
        progress: show a progress bar while downloading.
        prompt: latent text-conditioned priors: the prompt the denoiser is conditioned on (default: empty).
        guidance: latent text-conditioned priors: classifier-free guidance scale (default 1: off).

    Returns:
        The prior; ``prior.network`` is the raw network and ``prior.info`` its provenance (name, path, sha256,
        config).
    """
    from .networks.loading import load_network

    if not isinstance(spec, str | Path) or not str(spec).strip():
        raise ReddiffError(f"prior must be a name (see `reddiff list priors`) or a checkpoint path, got {spec!r}")
    text = str(spec)
    latent = {"prompt": prompt, "guidance": guidance}
    if text.startswith(("diffusers:", "sd:")):
        from .networks.diffusers_route import load_diffusers_prior, resolve_diffusers_folder
        from .networks.latent_route import is_latent_pipeline, load_latent_prior

        if config is not None:
            raise ReddiffError("--prior-config is for guided-diffusion checkpoints; a diffusers model has its own")
        route, name = text.split(":", 1)
        if route == "sd" or is_latent_pipeline(resolve_diffusers_folder(name, progress, allow=["model_index.json"])):
            return load_latent_prior(name, **latent, device=device, progress=progress)
        _no_latent_options(text, latent)
        return load_diffusers_prior(name, device=device, progress=progress)
    _no_latent_options(text, latent)
    from .usercode import is_user_spec

    if is_user_spec(text):
        from .networks.user_route import load_user_prior

        if config is not None:
            raise ReddiffError("--prior-config is for guided-diffusion checkpoints; a user prior configures itself")
        return load_user_prior(text, device=device)
    network, info = load_network(spec, config, progress=progress)
    prior = DiffusionPrior(network, VPSchedule(), learned_sigma=bool(info.get("learned_sigma")), info=info)
    if device is not None:
        prior = prior.to(device)
    return prior


def _no_latent_options(spec: str, options: dict[str, Any]) -> None:
    """One line when a prompt or guidance scale is given for a prior that takes none."""
    given = [k for k, v in options.items() if v is not None and v != ""]
    if given:
        raise ReddiffError(f"--{given[0]} is for text-conditioned latent priors (sd:FOLDER_OR_HUB_ID); {spec!r} "
                           "takes none")
