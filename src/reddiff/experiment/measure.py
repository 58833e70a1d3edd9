"""The rules every front end shares: seeds, simulating a measurement, and scoring an estimate."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ReddiffError
from ..io import as_saved, to_unit
from ..metrics import psnr, ssim
from ..noise import GaussianNoise, NoiseModel
from ..operators import LinearOperator, Operator, make_operator, parse_task

__all__ = ["MISFIT", "SSIM_MIN_SIZE", "Scores", "Seeds", "as_noise", "derive_seed", "measurement_fit", "operator_for",
           "pinv_psnr", "score", "simulate"]

#: SSIM's Gaussian window (11 taps): images with a side below this get no SSIM.
SSIM_MIN_SIZE = 11


def derive_seed(seed: int, name: str, purpose: str) -> int:
    """A 63-bit seed for one image and one purpose (``operator``, ``solver``), from the base seed and the name."""
    digest = hashlib.sha256(f"{seed}/{name}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Seeds:
    """The seeds of one image: its operator's random choices and measurement noise, and its solver's noise.

    Attributes:
        operator: seeds the operator (mask, kernel) and then the measurement noise, drawn from the same generator.
        solver: seeds the solver's generator.
    """

    operator: int
    solver: int

    @classmethod
    def for_image(cls, base: int, name: str) -> Seeds:
        """The CLI's rule: both seeds derived from the base seed and the image name, so a result does not depend on
        the folder, the order or the batch."""
        return cls(derive_seed(base, name, "operator"), derive_seed(base, name, "solver"))

    @classmethod
    def from_seed(cls, seed: int) -> Seeds:
        """The library's one-seed rule (:func:`reddiff.restore`): operator ``seed``, solver ``seed + 1``."""
        return cls(int(seed), int(seed) + 1)

    def for_sample(self, k: int, name: str = "") -> int:
        """The solver seed of sample ``k`` of this image (``--num-samples``): sample 0 has the image's own solver
        seed, so it equals the single-sample result when the samples do not interact; the others are derived."""
        return self.solver if k == 0 else derive_seed(self.solver, name, f"sample {k}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def as_noise(noise: NoiseModel | float) -> NoiseModel:
    """A noise model, or a Gaussian one for a number (its ``sigma_y`` in [-1, 1] units)."""
    return noise if isinstance(noise, NoiseModel) else GaussianNoise(float(noise))


def operator_for(task: str, x_shape: tuple[int, ...], seed: int, mask: str | Path | torch.Tensor | None = None
                 ) -> tuple[Operator, torch.Generator]:
    """The operator of ``task`` for images of ``x_shape``, its random choices drawn from a generator seeded with
    ``seed`` (returned too: the measurement noise continues it).

    A mask (file or tensor) defines the operator: any single inpainting task becomes ``inpaint-mask`` with it.
    """
    gen = torch.Generator().manual_seed(int(seed))
    if mask is not None:
        parsed = parse_task(task)
        if parsed.composite or not parsed.parts[0].name.startswith("inpaint"):
            raise ReddiffError(f"a mask is for inpainting tasks, not {task!r}")
        task = "inpaint-mask"
    return make_operator(task, tuple(x_shape), generator=gen, mask=mask), gen  # type: ignore[arg-type]


def simulate(x: torch.Tensor, task: str, noise: NoiseModel | float, seed: int) -> tuple[Operator, torch.Tensor]:
    """Build the operator of ``task`` for the clean image ``x`` and draw its measurement ``y = A(x) + noise``.

    Args:
        x: clean image ``[1, C, H, W]`` in [-1, 1].
        task: task string.
        noise: the noise model, or ``sigma_y`` in [-1, 1] units for Gaussian noise.
        seed: seed of the operator's random choices, then of the noise (one generator).

    Returns:
        ``(operator, y)``, the operator on ``x``'s device.
    """
    op, gen = operator_for(task, tuple(x.shape[1:]), seed)
    op = op.to(x.device)
    with torch.no_grad():
        y = as_noise(noise).sample(op.A(x), gen)
    return op, y


@dataclass(frozen=True)
class Scores:
    """PSNR (dB) and SSIM of one estimate against the clean image (None when not computed)."""

    psnr: float | None = None
    ssim: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def score(estimate: torch.Tensor, clean: torch.Tensor) -> Scores:
    """The one scoring rule: PSNR and SSIM of the estimate *as saved* (clipped to [-1, 1] and rounded to 8 bits,
    see :func:`reddiff.io.as_saved`) against the clean image, both mapped to [0, 1] in float64. SSIM (Gaussian
    window, 11 taps) needs both sides at least :data:`SSIM_MIN_SIZE`, else it is None. ``reddiff eval`` on the
    written files gives exactly these numbers.

    Args:
        estimate: ``[1, C, H, W]`` or ``[C, H, W]`` in [-1, 1].
        clean: the same shape.
    """
    est = estimate if estimate.dim() == 4 else estimate.unsqueeze(0)
    ref = clean if clean.dim() == 4 else clean.unsqueeze(0)
    # contiguous float64: the same memory layout whatever the tensors' origin, so the sums run in the same order
    a = to_unit(as_saved(est.detach().cpu()).double()).contiguous()
    b = to_unit(ref.detach().cpu().double()).contiguous()
    value = float(psnr(a, b)[0])
    s = float(ssim(a, b)[0]) if min(a.shape[-2:]) >= SSIM_MIN_SIZE else None
    return Scores(value, s)


def pinv_psnr(operator: Any, y: torch.Tensor, clean: torch.Tensor) -> float | None:
    """PSNR of the naive ``A_dagger(y)`` (for linear operators; None otherwise): what the solver improves on."""
    if not isinstance(operator, LinearOperator):
        return None
    with torch.no_grad():
        return score(operator.A_dagger(y).clamp(-1, 1), clean).psnr


#: An estimate whose residual is at least this share of a blank image's does not restore the measurement.
MISFIT = 1.0


def measurement_fit(operator: Any, y: torch.Tensor, estimate: torch.Tensor,
                    data_range: tuple[float, float] | None = (-1.0, 1.0)) -> float:
    """How much of the measurement an estimate leaves unexplained: ``||y - A(x)|| / ||y - A(0)||`` (per sample,
    the largest), with ``x`` clipped to ``data_range`` as it is saved (None: not clipped); ``A(0)`` is the
    measurement of a blank (mid-grey) image. A restoration leaves about the noise's share; :data:`MISFIT` or more
    means the estimate fits the measurement no better than a blank image (a sampler with too few steps, a
    diverged run)."""
    with torch.no_grad():
        x = estimate.to(y.dtype)
        x = x.clamp(*data_range) if data_range is not None else x
        resid = (y - operator.A(x)).flatten(1).norm(dim=1)
        blank = (y - operator.A(torch.zeros_like(x))).flatten(1).norm(dim=1)
        return float((resid / blank.clamp_min(torch.finfo(y.dtype).tiny)).max())
