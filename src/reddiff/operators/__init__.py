"""Forward operators ``A`` for imaging inverse problems (``y = A(x) + sigma_y * noise``).

Build one from a task string with :func:`make_operator`; :data:`TASKS` lists the task names. See
:mod:`reddiff.operators.base` for the operator interfaces, including the exact SVD layout used by DDRM.
"""

from __future__ import annotations

from reddiff.operators.base import (
    LinearOperator,
    Operator,
    SeparableOperator,
    SVDOperator,
    conjugate_gradient,
    uniform_first_basis,
)
from reddiff.operators.blur import (
    Convolution2D,
    SeparableBlur,
    gaussian_kernel_1d,
    motion_kernel,
    toeplitz_same,
    uniform_kernel_1d,
)
from reddiff.operators.color import Colorization
from reddiff.operators.denoise import Identity
from reddiff.operators.inpainting import (
    Inpainting,
    box_mask,
    center_mask,
    freeform_mask,
    half_mask,
    load_mask,
    random_mask,
)
from reddiff.operators.registry import TASKS, make_operator, parse_task, x_shape_from_measurement
from reddiff.operators.resampling import Bicubic, BlockAverage, bicubic_matrix

__all__ = [
    "TASKS",
    "Bicubic",
    "BlockAverage",
    "Colorization",
    "Convolution2D",
    "Identity",
    "Inpainting",
    "LinearOperator",
    "Operator",
    "SVDOperator",
    "SeparableBlur",
    "SeparableOperator",
    "bicubic_matrix",
    "box_mask",
    "center_mask",
    "conjugate_gradient",
    "freeform_mask",
    "gaussian_kernel_1d",
    "half_mask",
    "load_mask",
    "make_operator",
    "motion_kernel",
    "parse_task",
    "random_mask",
    "toeplitz_same",
    "uniform_first_basis",
    "uniform_kernel_1d",
    "x_shape_from_measurement",
]
