"""The feature networks behind the perceptual metrics, defined here so that no torchvision is needed.

Each module's ``state_dict`` has exactly the keys and shapes of the published checkpoint it reads:

- :class:`AlexNet`: torchvision's AlexNet (``alexnet-owt-7be5be79.pth``), the backbone of LPIPS-Alex
  (Zhang et al. 2018). LPIPS reads the outputs of its five ReLUs after each convolution.
- :class:`VGG16`: torchvision's VGG-16, configuration D (``vgg16-397923af.pth``), the backbone of LPIPS-VGG,
  read at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
- :class:`FIDInception`: the Inception-v3 that TensorFlow's FID used (``pt_inception-2015-12-05-6726825d.pth``, the
  graph ported to PyTorch by pytorch-fid and used by clean-fid and torch-fidelity): torchvision's Inception-v3 layout
  with 1008 classes, no auxiliary head, and the TensorFlow graph's pooling (average pools that ignore the padding,
  and a max pool in the last block). Its 2048-d output of the final average pool is the FID/KID feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AlexNet", "FIDInception", "VGG16", "ALEXNET_TAPS", "VGG16_TAPS"]

#: Indices in ``features`` after which LPIPS reads AlexNet's activations (the ReLUs of conv1..conv5).
ALEXNET_TAPS = (1, 4, 7, 9, 11)
#: Indices in ``features`` after which LPIPS reads VGG-16's activations (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_TAPS = (3, 8, 15, 22, 29)
#: VGG-16 (configuration D): output channels of each 3x3 convolution, "M" for a 2x2 max pool.
_VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                        512, 512, 512, "M")


class _Tapped(nn.Module):
    """A network whose ``features`` (an ``nn.Sequential``) are read after the layers listed in ``taps``."""

    features: nn.Sequential
    taps: tuple[int, ...]

    def taps_of(self, x: Tensor) -> list[Tensor]:
        """The activations after each tapped layer of ``features`` (the later layers are not run)."""
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
                if i == self.taps[-1]:
                    break
        return out


class AlexNet(_Tapped):
    """AlexNet as torchvision defines it ("one weird trick" variant: 64-192-384-256-256 channels)."""

    taps = ALEXNET_TAPS

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet class logits (not used by the metrics; kept so the checkpoint's classifier has a meaning)."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class VGG16(_Tapped):
    """VGG-16 (configuration D, no batch norm) as torchvision defines it."""

    taps = VGG16_TAPS

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU()]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet class logits (not used by the metrics)."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -- Inception-v3 as the FID graph has it ---------------------------------------------------------------------------
class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 0.001) and ReLU: Inception's basic unit (keys ``conv``, ``bn``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool_avg(x: Tensor) -> Tensor:
    """The TensorFlow graph's 3x3 average pool: padded positions are not counted."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _cat(parts: Sequence[Tensor]) -> Tensor:
    return torch.cat(list(parts), 1)


class _BlockA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches (torchvision's ``InceptionA``)."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                     self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                     self.branch_pool(_pool_avg(x))])


class _BlockB(nn.Module):
    """35 -> 17 reduction (torchvision's ``InceptionB``)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                     F.max_pool2d(x, 3, stride=2)])


class _BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (torchvision's ``InceptionC``)."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return _cat([self.branch1x1(x), b7, d, self.branch_pool(_pool_avg(x))])


class _BlockD(nn.Module):
    """17 -> 8 reduction (torchvision's ``InceptionD``)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return _cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)])


class _BlockE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs (torchvision's ``InceptionE``); ``max_pool`` selects the FID graph's
    max-pooled branch of its last block (the first keeps a padding-free average pool)."""

    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _pool_avg(x)
        return _cat([self.branch1x1(x), self.branch3x3_2a(s), self.branch3x3_2b(s), self.branch3x3dbl_3a(d),
                     self.branch3x3dbl_3b(d), self.branch_pool(pooled)])


class FIDInception(nn.Module):
    """Inception-v3 of the FID graph: input ``[B, 3, 299, 299]`` in [-1, 1]; :meth:`pool3` gives 2048 features."""

    def __init__(self, num_classes: int = 1008) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, num_classes)

    def pool3(self, x: Tensor) -> Tensor:
        """The 2048-d output of the final average pool (``[B, 2048]``), the FID/KID feature."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of the 1008-way head (not used by FID/KID)."""
        return self.fc(self.pool3(x))
