"""Latent priors: an autoencoder plus a diffusion prior in its latent space (Stable Diffusion and its kin).

A pixel image ``x`` (``[B, C, H, W]`` in [-1, 1]) maps to a latent ``z = E(x)`` and back by the decoder ``x = D(z)``.
``z`` is the variable the latent denoiser was trained on (for diffusers' ``AutoencoderKL``: the encoder's mean
times the ``scaling_factor``, after subtracting a ``shift_factor`` where the model has one). A
:class:`LatentPrior` is a :class:`reddiff.DiffusionPrior` over ``z`` (``prior.eps(z_t, t)`` is the latent
denoiser, in the same ``(alpha_t, sigma_t)`` language as every pixel prior) that also holds the autoencoder:
:meth:`LatentPrior.encode`, :meth:`LatentPrior.decode`, :meth:`LatentPrior.latent_shape`.

Images whose sides are not multiples of the autoencoder's downsampling factor are padded before encoding (reflect,
or replicate where the image is too small to reflect) and the decoded image is cropped back, so any image size
works, as with pixel priors.

RED-diff uses a latent prior in one of two forms (:class:`reddiff.RedDiff`'s ``latent_mode``; see
:mod:`reddiff.solvers.latent`); it never backpropagates through the denoiser, only through the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ReddiffError
from .prior import DiffusionPrior

__all__ = ["Autoencoder", "LinearAutoencoder", "DiffusersAutoencoder", "ConditionedUNet", "LatentPrior"]


class Autoencoder(nn.Module):
    """What a latent prior needs of an autoencoder: :meth:`encode`, :meth:`decode` and :meth:`latent_shape`.

    Attributes:
        image_channels: channels of the images it takes (None: any data shape, as for vectors).
    """

    image_channels: int | None = None

    def latent_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """The latent shape (without batch) of data of shape ``x_shape`` (without batch)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """``z = E(x)``: ``[B, *x_shape] -> [B, *latent_shape]``."""
        raise NotImplementedError

    def decode(self, z: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """``x = D(z)``, cropped to the pixel ``size`` ``(H, W)`` when given (differentiable in ``z``)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the autoencoder is, for run records."""
        return {"autoencoder": type(self).__name__}


class LinearAutoencoder(Autoencoder):
    """A linear autoencoder ``D(z) = W z``, ``E(x) = W^+ x`` on flattened data: the case in which latent RED-diff
    can be checked against closed forms (with ``W = I`` it is pixel RED-diff).

    Args:
        W: ``[n, d]``: ``n`` data entries per sample, ``d`` latent entries.
        x_shape: the data shape (without batch) whose ``prod`` is ``n`` (default ``(n,)``: vectors).
    """

    def __init__(self, W: Tensor, x_shape: Sequence[int] | None = None) -> None:  # noqa: N803 - the usual name
        super().__init__()
        W = torch.as_tensor(W)
        if W.dim() != 2:
            raise ReddiffError(f"W must be a matrix [n, d], got shape {tuple(W.shape)}")
        n, _ = W.shape
        self.x_shape = tuple(int(v) for v in (x_shape if x_shape is not None else (n,)))
        if math.prod(self.x_shape) != n:
            raise ReddiffError(f"x_shape {self.x_shape} holds {math.prod(self.x_shape)} entries but W has {n} rows")
        self.register_buffer("W", W)
        self.register_buffer("W_pinv", torch.linalg.pinv(W.to(torch.float64)).to(W.dtype))

    def latent_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        if tuple(x_shape) != self.x_shape:
            raise ReddiffError(f"this linear autoencoder takes data of shape {self.x_shape}, got {tuple(x_shape)}")
        return (int(self.W.shape[1]),)

    def encode(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) @ self.W_pinv.to(x.dtype).T

    def decode(self, z: Tensor, size: Sequence[int] | None = None) -> Tensor:
        return (z @ self.W.to(z.dtype).T).reshape(z.shape[0], *self.x_shape)

    def describe(self) -> dict[str, Any]:
        import hashlib

        digest = hashlib.sha256(self.W.detach().cpu().to(torch.float64).contiguous().numpy().tobytes()).hexdigest()
        return {"autoencoder": "linear", "W": list(self.W.shape), "W_sha256": digest}


def _pad_to(x: Tensor, multiple: int) -> Tensor:
    """``x`` padded at the bottom and right to sides that are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class DiffusersAutoencoder(Autoencoder):
    """A diffusers ``AutoencoderKL`` (Stable Diffusion's VAE) as an :class:`Autoencoder`.

    ``E(x) = (mean of q(z | x) - shift_factor) * scaling_factor`` (the posterior's mode: the encoder's best guess,
    not a draw), ``D(z) = decoder(z / scaling_factor + shift_factor)``. The decoder runs with gradient
    checkpointing when ``checkpointing`` is set (diffusers' own), so a decoder backward at 512² keeps only the
    activations of one block at a time.

    Args:
        vae: the ``AutoencoderKL``.
        checkpointing: recompute the decoder's activations in its backward pass instead of keeping them.
    """

    def __init__(self, vae: nn.Module, checkpointing: bool = True) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.image_channels = int(cfg.in_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.scaling_factor = float(cfg.get("scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(cfg.get("shift_factor", 0.0) or 0.0)
        self.checkpointing = bool(checkpointing)
        if self.checkpointing and hasattr(vae, "enable_gradient_checkpointing"):
            vae.enable_gradient_checkpointing()

    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        if len(x_shape) != 3:
            raise ReddiffError(f"the autoencoder takes images [C, H, W], got data of shape {tuple(x_shape)}")
        c, h, w = (int(v) for v in x_shape)
        if c != self.image_channels:
            raise ReddiffError(f"the autoencoder takes {self.image_channels}-channel images, got {c} channel"
                               f"{'s' if c != 1 else ''}")
        return (self.latent_channels, -(-h // self.factor), -(-w // self.factor))

    def encode(self, x: Tensor) -> Tensor:
        self.latent_shape(x.shape[1:])
        inp = _pad_to(x, self.factor).to(self._dtype())
        mean = self.vae.encode(inp).latent_dist.mean
        return ((mean - self.shift_factor) * self.scaling_factor).to(x.dtype)

    def decode(self, z: Tensor, size: Sequence[int] | None = None) -> Tensor:
        out = self.vae.decode((z.to(self._dtype()) / self.scaling_factor) + self.shift_factor).sample.to(z.dtype)
        if size is not None:
            out = out[..., : int(size[0]), : int(size[1])]
        return out

    def describe(self) -> dict[str, Any]:
        return {"autoencoder": "AutoencoderKL", "factor": self.factor, "latent_channels": self.latent_channels,
                "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
                "checkpointing": self.checkpointing}


class ConditionedUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` with its text conditioning bound: ``network(z, t) -> prediction``.

    With ``guidance`` ``g != 1`` it is classifier-free guidance (Ho & Salimans 2022) as diffusers applies it to the
    network's output: ``u + g (c - u)``, with ``c`` the prediction under the prompt's embedding and ``u`` under the
    empty prompt's (two evaluations per call, in one batch).

    Args:
        unet: the model.
        cond: the prompt's embedding ``[1, L, D]``.
        uncond: the empty prompt's embedding ``[1, L, D]`` (needed when ``guidance != 1``).
        guidance: the guidance scale (1: off).
    """

    def __init__(self, unet: nn.Module, cond: Tensor, uncond: Tensor | None = None, guidance: float = 1.0) -> None:
        super().__init__()
        self.unet = unet
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1)
        self.guidance = float(guidance)
        if self.guidance != 1.0 and uncond is None:
            raise ReddiffError("classifier-free guidance needs the empty prompt's embedding")
        self.register_buffer("cond", cond)
        self.register_buffer("uncond", uncond if uncond is not None else cond)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        b = z.shape[0]
        cond = self.cond.to(z.dtype).expand(b, *self.cond.shape[1:])
        if self.guidance == 1.0:
            return self.unet(z, t, encoder_hidden_states=cond).sample
        uncond = self.uncond.to(z.dtype).expand(b, *self.uncond.shape[1:])
        out = self.unet(torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
        u, c = out.chunk(2)
        return u + self.guidance * (c - u)


class LatentPrior(DiffusionPrior):
    """A diffusion prior in an autoencoder's latent space.

    It is the latent :class:`reddiff.DiffusionPrior` (``eps``, ``predict``, the schedule and the network, which
    runtime settings act on, are the latent denoiser's) with the autoencoder beside it. Solvers that support latent
    priors (RED-diff in both forms; DDIM, which decodes its sample) work in ``z`` and map to pixels with
    :meth:`decode`; the others refuse them in one line.

    Args:
        autoencoder: an :class:`Autoencoder`.
        latent: the prior over latents; its network, schedule, prediction type and settings are taken over (its
            ``eps``/``predict`` must be :class:`reddiff.DiffusionPrior`'s own).
        info: provenance, merged over ``latent.info``.
        pixel_range: bounds of the decoded images (default ``(-1, 1)``; None: unbounded, as for vectors).
    """

    def __init__(self, autoencoder: Autoencoder, latent: DiffusionPrior, info: dict[str, Any] | None = None,
                 pixel_range: tuple[float, float] | None = (-1.0, 1.0)) -> None:
        if not isinstance(autoencoder, Autoencoder):
            raise ReddiffError(f"autoencoder must be a reddiff Autoencoder, got {type(autoencoder).__name__}")
        if not isinstance(latent, DiffusionPrior) or isinstance(latent, LatentPrior):
            raise ReddiffError(f"latent must be a reddiff DiffusionPrior over latents, got {type(latent).__name__}")
        if type(latent).eps is not DiffusionPrior.eps or type(latent).predict is not DiffusionPrior.predict:
            raise ReddiffError(f"{type(latent).__name__} overrides eps/predict; a latent prior takes over the "
                               "network, schedule and prediction type of a plain DiffusionPrior")
        super().__init__(latent.network, latent.schedule, learned_sigma=latent.learned_sigma,
                         info={**latent.info, **(info or {})}, data_range=latent.data_range,
                         prediction=latent.prediction, network_time=latent.network_time,
                         clip_denoised=latent.clip_denoised)
        self.autoencoder = autoencoder
        self.pixel_range = pixel_range
        self.steps_offset, self.final_abar = latent.steps_offset, latent.final_abar

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "latent": True, **self.autoencoder.describe()}

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), **{k: self.info.get(k) for k in ("vae_sha256", "prompt", "guidance")},
                "autoencoder": {k: v for k, v in self.autoencoder.describe().items() if k != "checkpointing"}}

    def latent_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """The latent shape ``[B, ...]`` of pixel data of shape ``x_shape`` ``[B, ...]``.

        Raises:
            ReddiffError: data the autoencoder cannot take (e.g. a channel count other than its own).
        """
        return (int(x_shape[0]), *self.autoencoder.latent_shape(tuple(x_shape[1:])))

    def encode(self, x: Tensor) -> Tensor:
        """``z = E(x)``."""
        return self.autoencoder.encode(x)

    def decode(self, z: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """``x = D(z)`` (cropped to ``size``), differentiable in ``z``."""
        return self.autoencoder.decode(z, size)
