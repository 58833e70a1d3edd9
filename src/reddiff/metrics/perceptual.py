"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018), v0.1,
on AlexNet or VGG-16, in pure PyTorch.

For images ``a, b`` in [-1, 1]: scale each channel as the published metric does (``(x - shift) / scale``), read
the backbone's five ReLU outputs ``f_l``, normalise each pixel's feature vector to unit length, and sum over layers
the spatial mean of ``w_l . (f_l(a) - f_l(b))^2``, where ``w_l >= 0`` are the published linear weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbones import VGG16, AlexNet
from .weights import find_weights, load_into

__all__ = ["LPIPS", "LPIPS_NETS", "lpips_weight_names"]

#: Backbone -> (network class, channels of its five tapped layers).
LPIPS_NETS: dict[str, tuple[type, tuple[int, ...]]] = {
    "alex": (AlexNet, (64, 192, 384, 256, 256)),
    "vgg": (VGG16, (64, 128, 256, 512, 512)),
}
#: The published per-channel input scaling of LPIPS v0.1 (inputs in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
#: Added to a feature vector's norm before dividing by it (as published).
_EPS = 1e-10


def lpips_weight_names(net: str) -> tuple[str, str]:
    """The :data:`~reddiff.metrics.weights.METRIC_WEIGHTS` names LPIPS on ``net`` needs: (backbone, linear layers)."""
    return ("alexnet" if net == "alex" else "vgg16", f"lpips-{net}")


class _Linear(nn.Module):
    """One published linear layer (a 1x1 convolution without bias; key ``model.1.weight``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """The LPIPS distance; ``forward(a, b)`` returns one value per image pair.

    Args:
        net: ``"alex"`` (the usual choice in restoration papers) or ``"vgg"``.
        backbone: the backbone's weight file (torchvision's checkpoint), or None for random weights (tests).
        linear: the LPIPS linear layers' file, or None for random non-negative weights (tests).
    """

    def __init__(self, net: str = "alex", backbone: str | None = None, linear: str | None = None) -> None:
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"unknown LPIPS network {net!r}; accepted: {', '.join(LPIPS_NETS)}")
        cls, channels = LPIPS_NETS[net]
        self.net_name = net
        if backbone is not None:
            with torch.device("meta"):
                self.net = cls()
            load_into(self.net, backbone, f"torchvision's {cls.__name__} checkpoint")
        else:
            self.net = cls()
        del self.net.classifier  # only the features are used; frees most of VGG-16's memory
        self.lins = nn.ModuleList(_Linear(c) for c in channels)
        if linear is not None:
            holder = nn.Module()
            for i, lin in enumerate(self.lins):
                holder.add_module(f"lin{i}", lin)
            load_into(holder, linear, f"the LPIPS v0.1 {net} linear layers")
        else:
            for lin in self.lins:
                nn.init.uniform_(lin.model[1].weight, 0.0, 0.1)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @classmethod
    def published(cls, net: str = "alex") -> LPIPS:
        """LPIPS with the published weights found locally (see :mod:`reddiff.metrics.weights`).

        Raises:
            CheckpointError: a weight file is missing (the message names it and how to get it).
        """
        from .registry import require

        names = lpips_weight_names(net)
        require(f"lpips-{net}" if net != "alex" else "lpips", names)
        return cls(net, str(find_weights(names[0])), str(find_weights(names[1])))

    def layers(self, a: Tensor, b: Tensor) -> list[Tensor]:
        """Each layer's contribution, ``[B]`` per layer (their sum is the distance)."""
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS compares [B, 3, H, W] images of one shape, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        fa = self.net.taps_of((a - self.shift) / self.scale)
        fb = self.net.taps_of((b - self.shift) / self.scale)
        out = []
        for lin, xa, xb in zip(self.lins, fa, fb, strict=True):
            na = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + _EPS)
            nb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + _EPS)
            out.append(lin((na - nb).pow(2)).mean((1, 2, 3)))
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """LPIPS between ``a`` and ``b`` (``[B, 3, H, W]`` in [-1, 1]): ``[B]``."""
        return torch.stack(self.layers(a, b)).sum(0)
