"""reddiff: solve imaging inverse problems with pretrained diffusion priors using RED-diff.

RED-diff is the variational sampler of Mardani, Song, Kautz and Vahdat, "A Variational Perspective on Solving
Inverse Problems with Diffusion Models" (ICLR 2024, arXiv 2305.04391).

Quick start::

    import torch, reddiff
    prior = reddiff.load_prior("model.pt")                      # or a named prior, see `reddiff list priors`
    x = reddiff.io.load_image("photo.png")                      # [1, 3, H, W] in [-1, 1]
    op = reddiff.make_operator("sr:4", x.shape[1:], generator=torch.Generator().manual_seed(0))
    y = op(x) + 0.05 * torch.randn_like(op(x))
    mu = reddiff.RedDiff(steps=100)(prior, reddiff.Problem(y, op, sigma_y=0.05))

The public names are imported lazily so that ``import reddiff`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

try:
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("reddiff")
    except PackageNotFoundError:  # running from a source tree
        __version__ = "0.1.0"
except ImportError:  # pragma: no cover
    __version__ = "0.1.0"

#: The public API: name -> (module, attribute), imported on first use. ``__all__`` is generated from it.
_LAZY: dict[str, tuple[str, str]] = {
    "DiffusionPrior": ("reddiff.prior", "DiffusionPrior"),
    "load_prior": ("reddiff.prior", "load_prior"),
    "LatentPrior": ("reddiff.latent", "LatentPrior"),
    "Autoencoder": ("reddiff.latent", "Autoencoder"),
    "LinearAutoencoder": ("reddiff.latent", "LinearAutoencoder"),
    "export_diffusers": ("reddiff.networks.export", "export_diffusers"),
    "VPSchedule": ("reddiff.schedule", "VPSchedule"),
    "make_operator": ("reddiff.operators", "make_operator"),
    "Operator": ("reddiff.operators", "Operator"),
    "LinearOperator": ("reddiff.operators", "LinearOperator"),
    "SVDOperator": ("reddiff.operators", "SVDOperator"),
    "MatrixOperator": ("reddiff.operators.matrix", "MatrixOperator"),
    "TASKS": ("reddiff.operators", "TASKS"),
    "NoiseModel": ("reddiff.noise", "NoiseModel"),
    "GaussianNoise": ("reddiff.noise", "GaussianNoise"),
    "PoissonNoise": ("reddiff.noise", "PoissonNoise"),
    "Problem": ("reddiff.solvers.base", "Problem"),
    "StepInfo": ("reddiff.solvers.base", "StepInfo"),
    "RedDiff": ("reddiff.solvers.reddiff", "RedDiff"),
    "DDIM": ("reddiff.solvers.ddim", "DDIM"),
    "DPS": ("reddiff.solvers.dps", "DPS"),
    "PiGDM": ("reddiff.solvers.pigdm", "PiGDM"),
    "DDRM": ("reddiff.solvers.ddrm", "DDRM"),
    "SOLVERS": ("reddiff.solvers", "SOLVERS"),
    "restore": ("reddiff.experiment", "restore"),
    "simulate": ("reddiff.experiment", "simulate"),
    "score": ("reddiff.experiment", "score"),
    "evaluate": ("reddiff.experiment.evaluation", "evaluate"),
    "LPIPS": ("reddiff.metrics", "LPIPS"),
    "Runtime": ("reddiff.runtime", "Runtime"),
    "GaussianMixturePrior": ("reddiff.tools.gmm", "GaussianMixturePrior"),
    "sliced_wasserstein": ("reddiff.tools.gmm", "sliced_wasserstein"),
    "psnr": ("reddiff.metrics", "psnr"),
    "ssim": ("reddiff.metrics", "ssim"),
    "ReddiffError": ("reddiff.errors", "ReddiffError"),
    "CheckpointError": ("reddiff.errors", "CheckpointError"),
    "OperatorError": ("reddiff.errors", "OperatorError"),
    "SolverError": ("reddiff.errors", "SolverError"),
}

#: Sub-packages and modules reachable as ``reddiff.NAME`` without an explicit import.
_MODULES = ("cli", "errors", "experiment", "io", "metrics", "networks", "noise", "operators", "params", "prior",
            "runtime", "schedule", "solvers", "tools")

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f"reddiff.{name}")
    raise AttributeError(f"module 'reddiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .errors import CheckpointError, OperatorError, ReddiffError, SolverError
    from .experiment import restore, score, simulate
    from .experiment.evaluation import evaluate
    from .latent import Autoencoder, LatentPrior, LinearAutoencoder
    from .metrics import LPIPS, psnr, ssim
    from .noise import GaussianNoise, NoiseModel, PoissonNoise
    from .operators import TASKS, LinearOperator, Operator, SVDOperator, make_operator
    from .operators.matrix import MatrixOperator
    from .prior import DiffusionPrior, load_prior
    from .runtime import Runtime
    from .schedule import VPSchedule
    from .solvers import SOLVERS
    from .solvers.base import Problem, StepInfo
    from .solvers.ddim import DDIM
    from .solvers.ddrm import DDRM
    from .solvers.dps import DPS
    from .solvers.pigdm import PiGDM
    from .solvers.reddiff import RedDiff
    from .tools.gmm import GaussianMixturePrior, sliced_wasserstein
