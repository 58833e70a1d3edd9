"""Composite operators (task ``TASK+TASK+...``): the parts applied in order, ``A = A_k o ... o A_2 o A_1``.

The first part acts on the image, each next part on the previous part's output (which must be an image,
``[C, H, W]``). A composite of linear parts is linear: ``A^T = A_1^T o ... o A_k^T`` and ``A^+`` is computed by
conjugate gradients on the composite (:meth:`reddiff.operators.base.LinearOperator.A_dagger`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from reddiff.errors import OperatorError
from reddiff.operators.base import LinearOperator, Operator

__all__ = ["Composite", "LinearComposite", "compose"]


class Composite(Operator):
    """``A(x) = parts[-1](... parts[0](x))``.

    :meth:`initial_estimate` inverts the chain backwards, each part with its :meth:`~Operator.inverse_estimate`
    (its own initial estimate, else ``A_dagger`` for a linear part); it is None when some part has neither. The
    measurement image (:meth:`y_to_image`, :meth:`image_to_y`) is the last part's.

    Args:
        parts: The operators, in the order they are applied; ``parts[i].y_shape == parts[i + 1].x_shape``.
        task: Canonical task string (default: the parts' tasks joined by ``+``).

    Raises:
        OperatorError: No parts, or shapes that do not chain.
    """

    def __init__(self, parts: Sequence[Operator], task: str | None = None) -> None:
        ops = list(parts)
        if not ops:
            raise OperatorError("a composite operator needs at least one part")
        for a, b in zip(ops[:-1], ops[1:]):
            if tuple(a.y_shape) != tuple(b.x_shape):
                raise OperatorError(
                    f"cannot chain {a.task!r} (output {list(a.y_shape)}) into {b.task!r} (input {list(b.x_shape)})"
                )
        name = task if task is not None else "+".join(op.task for op in ops)
        super().__init__(ops[0].x_shape, ops[-1].y_shape, name)
        self.parts = nn.ModuleList(ops)

    def params(self) -> dict[str, Any]:
        return {"parts": [{"task": op.task, **op.params()} for op in self.parts]}

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        for op in self.parts:
            x = op.A(x)
        return x

    def _invert_backwards(self, y: Tensor) -> tuple[Tensor | None, bool]:
        """The backwards chain of the parts' inverse estimates, and whether some part used an estimate of its own."""
        self._check_y(y)
        own = False
        for op in reversed(self.parts):
            est = op.initial_estimate(y)
            own = own or est is not None
            if est is None:
                est = op.inverse_estimate(y)
            if est is None:
                return None, own
            y = est
        return y, own

    def initial_estimate(self, y: Tensor) -> Tensor | None:
        """The parts inverted backwards (each part's initial estimate, else its ``A_dagger``), or None."""
        return self._invert_backwards(y)[0]

    def y_to_image(self, y: Tensor) -> Tensor:
        return self.parts[-1].y_to_image(y)

    def image_to_y(self, img: Tensor) -> Tensor:
        return self.parts[-1].image_to_y(img)


class LinearComposite(Composite, LinearOperator):
    """A composite of linear parts: ``A^T`` is the reversed chain of adjoints, ``A^+`` by conjugate gradients.

    :meth:`initial_estimate` (the backwards chain of the parts' own inverses) is not None only when some part has an
    initial estimate of its own (e.g. a blur's regularised pseudo-inverse); otherwise solvers start from the
    composite's ``A_dagger``.
    """

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        for op in reversed(self.parts):
            y = op.A_adjoint(y)
        return y

    def initial_estimate(self, y: Tensor) -> Tensor | None:
        est, own = self._invert_backwards(y)
        return est if own else None


def compose(parts: Sequence[Operator], task: str | None = None) -> Composite:
    """A :class:`LinearComposite` when every part is a :class:`LinearOperator`, else a :class:`Composite`."""
    ops = list(parts)
    if ops and all(isinstance(op, LinearOperator) for op in ops):
        return LinearComposite(ops, task)
    return Composite(ops, task)
