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


def _inverse_step(op: Any) -> Any:
    """The part's own rough inverse: ``initial_estimate`` where defined, else ``A_dagger``, else None."""
    for name in ("initial_estimate", "A_dagger"):
        fn = getattr(op, name, None)
        if callable(fn):
            return fn
    return None


class Composite(Operator):
    """``A(x) = parts[-1](... parts[0](x))``.

    :meth:`initial_estimate` (offered when every part has ``initial_estimate`` or ``A_dagger``) inverts the chain
    backwards, each part with its ``initial_estimate`` if it has one, else its ``A_dagger``. The measurement image
    (:meth:`y_to_image`, :meth:`image_to_y`) is the last part's.

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
        self._inverses_available = all(_inverse_step(op) is not None for op in ops)
        if not self._inverses_available:
            self.initial_estimate = None  # type: ignore[assignment,method-assign]

    def params(self) -> dict[str, Any]:
        return {"parts": [{"task": op.task, **op.params()} for op in self.parts]}

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        for op in self.parts:
            x = op.A(x)
        return x

    def initial_estimate(self, y: Tensor) -> Tensor:
        """Invert the parts backwards (each part's ``initial_estimate``, else its ``A_dagger``)."""
        self._check_y(y)
        for op in reversed(self.parts):
            y = _inverse_step(op)(y)
        return y

    def y_to_image(self, y: Tensor) -> Tensor:
        return self.parts[-1].y_to_image(y)

    def image_to_y(self, img: Tensor) -> Tensor:
        return self.parts[-1].image_to_y(img)


class LinearComposite(Composite, LinearOperator):
    """A composite of linear parts: ``A^T`` is the reversed chain of adjoints, ``A^+`` by conjugate gradients.

    :meth:`initial_estimate` (the backwards chain of the parts' own inverses) is offered only when some part defines
    its own ``initial_estimate`` (e.g. a blur's regularised pseudo-inverse); otherwise solvers use ``A_dagger``.
    """

    linear = True

    def __init__(self, parts: Sequence[LinearOperator], task: str | None = None) -> None:
        super().__init__(parts, task)
        if not any(callable(getattr(op, "initial_estimate", None)) for op in self.parts):
            self.initial_estimate = None  # type: ignore[assignment,method-assign]

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        for op in reversed(self.parts):
            y = op.A_adjoint(y)
        return y


def compose(parts: Sequence[Operator], task: str | None = None) -> Composite:
    """A :class:`LinearComposite` when every part is linear (has ``A_adjoint``), else a :class:`Composite`."""
    ops = list(parts)
    if ops and all(getattr(op, "linear", False) and callable(getattr(op, "A_adjoint", None)) for op in ops):
        return LinearComposite(ops, task)
    return Composite(ops, task)
