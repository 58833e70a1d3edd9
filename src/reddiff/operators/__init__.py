"""Forward operators ``A`` for imaging inverse problems (``y = A(x) + sigma_y * noise``).

Build one from a task string with :func:`make_operator`; :data:`TASKS` lists the task names. See
:mod:`reddiff.operators.base` for the operator interfaces, including the exact SVD layout used by DDRM.
"""

from __future__ import annotations

from reddiff.operators.base import (
    LinearOperator,
    Operator,
    SelectionOperator,
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
from reddiff.operators.composite import Composite, LinearComposite, compose
from reddiff.operators.cs import CompressedSensing
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
from reddiff.operators.jpeg import JPEG
from reddiff.operators.phase import PhaseRetrieval
from reddiff.operators.pointwise import HDR, Quantize, round_ste
from reddiff.operators.registry import (
    TASKS,
    TaskSpec,
    TaskString,
    make_operator,
    parse_task,
    register_task,
    task_specs,
    x_shape_from_measurement,
)
from reddiff.operators.resampling import Bicubic, BlockAverage, bicubic_matrix
from reddiff.operators.separable import SeparableOperator
from reddiff.operators.stacked import StackedOperator, stack
from reddiff.operators.user import CallableOperator, LinearCallableOperator, load_user_operator

__all__ = [
    "TASKS",
    "HDR",
    "JPEG",
    "Bicubic",
    "BlockAverage",
    "CallableOperator",
    "Colorization",
    "Composite",
    "CompressedSensing",
    "Convolution2D",
    "Identity",
    "Inpainting",
    "LinearCallableOperator",
    "LinearComposite",
    "LinearOperator",
    "Operator",
    "PhaseRetrieval",
    "Quantize",
    "SVDOperator",
    "SelectionOperator",
    "StackedOperator",
    "TaskSpec",
    "TaskString",
    "SeparableBlur",
    "SeparableOperator",
    "bicubic_matrix",
    "box_mask",
    "center_mask",
    "compose",
    "conjugate_gradient",
    "freeform_mask",
    "gaussian_kernel_1d",
    "half_mask",
    "load_mask",
    "load_user_operator",
    "make_operator",
    "motion_kernel",
    "parse_task",
    "random_mask",
    "round_ste",
    "register_task",
    "task_specs",
    "stack",
    "toeplitz_same",
    "uniform_first_basis",
    "uniform_kernel_1d",
    "x_shape_from_measurement",
]
