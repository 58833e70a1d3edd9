"""User-defined forward operators: ``--task path/to/file.py:function`` or ``--task package.module:function``.

The function is called once as ``function(shape)`` with the image shape ``(C, H, W)`` (a tuple of ints) and must
return either

* a :class:`reddiff.operators.Operator` (used as it is; its ``x_shape`` must equal ``shape``), or
* any differentiable callable mapping a batch ``[B, C, H, W]`` (torch tensor, pixels in [-1, 1]) to a batch of
  measurements ``[B, ...]`` (for example a function or a ``torch.nn.Module``). It is wrapped in a
  :class:`CallableOperator`; the measurement shape is found by a probe call on zeros.

A callable with the attribute ``linear = True`` (or a returned :class:`~reddiff.operators.LinearOperator`) is linear:
the wrapper gets its adjoint from autograd (``A^T y`` is the vector-Jacobian product of ``A`` with ``y``) and its
pseudo-inverse by conjugate gradients on ``A A^T``, unless the callable provides its own ``A_adjoint`` /
``A_dagger`` methods; it is checked once, on random images, to be linear. An ``initial_estimate(y)`` method, if
present, is used by RED-diff's default initialisation; ``measurement_is_image = True`` says that the measurement is
a picture (robust data terms then start from its despeckled version).

Example ``my_ops.py``::

    import torch

    def make(shape):
        c, h, w = shape

        def forward(x):  # a 2x2 average pooling followed by a gamma curve
            y = torch.nn.functional.avg_pool2d(x, 2)
            return torch.sign(y) * y.abs() ** 0.8

        return forward

then ``reddiff solve --input img.png --task my_ops.py:make --output out`` (or ``make_operator("my_ops.py:make",
(3, 256, 256))``). Every problem loading or probing the operator (missing file, syntax error, missing function, the
function raising, a non-callable or non-differentiable result) is one :class:`~reddiff.errors.OperatorError` naming
the file or module, the function and what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from reddiff.errors import OperatorError, UserCodeError
from reddiff.operators.base import LinearOperator, Operator, conjugate_gradient
from reddiff.usercode import is_user_spec, load_factory, split_user_spec

__all__ = ["CallableOperator", "LinearCallableOperator", "load_user_operator", "split_user_spec", "is_user_spec"]


def _probe(fn: Callable[[Tensor], Any], shape: tuple[int, int, int], where: str) -> tuple[int, ...]:
    """Call ``fn`` on zeros (batches of 1 and 2) and check the output; return the measurement shape."""
    shapes = []
    for batch in (1, 2):
        x = torch.zeros((batch, *shape), requires_grad=True)
        try:
            out = fn(x)
        except Exception as exc:  # noqa: BLE001
            raise OperatorError(f"user operator {where}: calling it on a [{batch}, {', '.join(map(str, shape))}] "
                                f"image raised {type(exc).__name__}: {exc}") from None
        if not isinstance(out, Tensor):
            raise OperatorError(f"user operator {where}: it must return a torch tensor, got {type(out).__name__}")
        if not out.is_floating_point() or out.dim() < 1 or out.shape[0] != batch:
            raise OperatorError(f"user operator {where}: it must return a floating tensor [B, ...] with the batch "
                                f"first; for a batch of {batch} it returned {out.dtype} {list(out.shape)}")
        if not out.requires_grad:
            raise OperatorError(f"user operator {where}: its output is not differentiable w.r.t. the image "
                                "(avoid .detach(), .numpy(), torch.no_grad() and integer casts in the forward model)")
        shapes.append(tuple(out.shape[1:]))
    if shapes[0] != shapes[1]:
        raise OperatorError(f"user operator {where}: the measurement shape depends on the batch size "
                            f"({list(shapes[0])} vs {list(shapes[1])})")
    return shapes[0]


class CallableOperator(Operator):
    """An :class:`Operator` around a differentiable callable ``fn: [B, C, H, W] -> [B, *y_shape]``.

    ``fn`` may be a ``torch.nn.Module`` (it is then registered as a submodule, so ``.to()`` moves it). Its
    ``initial_estimate``, ``classical_estimate``, ``y_to_image`` and ``image_to_y`` methods are used when it has
    them. Every call of the user's code is guarded: an exception inside it, or an output of another shape than the
    probe found, becomes one :class:`~reddiff.errors.UserCodeError` naming the operator (the original exception is
    its cause).

    Args:
        fn: The forward model.
        x_shape: ``(C, H, W)``.
        y_shape: Measurement shape (without batch).
        task: Task string (the user spec).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], x_shape: Sequence[int], y_shape: Sequence[int],
                 task: str) -> None:
        super().__init__(x_shape, y_shape, task)
        self.fn = fn
        self.measurement_is_image = bool(getattr(fn, "measurement_is_image", False))

    def params(self) -> dict[str, Any]:
        return {"callable": getattr(self.fn, "__qualname__", type(self.fn).__name__)}

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any error of user code becomes one clear message
            raise UserCodeError(f"user operator {self.task!r}: its {what} raised {type(exc).__name__}: {exc}") from exc

    def _own(self, name: str, y: Tensor) -> Tensor | None:
        fn = getattr(self.fn, name, None)
        return self._call(name, fn, y) if callable(fn) else None

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_x(x)
        out = self._call("forward model", self.fn, x)
        if not isinstance(out, Tensor) or tuple(out.shape) != (x.shape[0], *self.y_shape):
            got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise UserCodeError(f"user operator {self.task!r} returned {got} for a batch of {x.shape[0]}, but "
                                f"{[x.shape[0], *self.y_shape]} when it was loaded; its output shape must not change")
        return out

    def initial_estimate(self, y: Tensor) -> Tensor | None:
        """The callable's own ``initial_estimate(y)``, if it has one."""
        return self._own("initial_estimate", y)

    def classical_estimate(self, y: Tensor) -> Tensor | None:
        """The callable's own ``classical_estimate(y)``, if it has one."""
        return self._own("classical_estimate", y)

    def y_to_image(self, y: Tensor) -> Tensor:
        own = self._own("y_to_image", y)
        return own if own is not None else super().y_to_image(y)

    def image_to_y(self, img: Tensor) -> Tensor:
        own = self._own("image_to_y", img)
        return own if own is not None else super().image_to_y(img)


class LinearCallableOperator(CallableOperator, LinearOperator):
    """A linear user operator: ``A^T`` by autograd (vector-Jacobian product), ``A^+`` by conjugate gradients.

    The callable's own ``A_adjoint`` / ``A_dagger`` methods are used when it has them.
    """

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_y(y)
        own = self._own("A_adjoint", y)
        if own is not None:
            return own
        with torch.enable_grad():
            x = torch.zeros((y.shape[0], *self.x_shape), dtype=y.dtype, device=y.device, requires_grad=True)
            out = self.A(x)
            (grad,) = torch.autograd.grad(out, x, grad_outputs=y, create_graph=y.requires_grad)
        return grad

    def A_dagger(self, y: Tensor, *, cg_iters: int | None = None, cg_tol: float | None = None) -> Tensor:  # noqa: N802
        own = self._own("A_dagger", y)
        if own is not None:
            return own
        self._check_y(y)
        iters = self.cg_iters if cg_iters is None else int(cg_iters)
        tol = self.cg_tol if cg_tol is None else float(cg_tol)
        z = conjugate_gradient(lambda v: self.A(self.A_adjoint(v)), y, iters=iters, tol=tol)
        return self.A_adjoint(z)


def _check_linear(op: Operator, where: str, rtol: float = 1e-3) -> None:
    """Refuse an operator declared linear for which ``A(a x + b z) != a A(x) + b A(z)`` on random inputs."""
    gen = torch.Generator().manual_seed(0)
    x, z = (torch.rand((2, *op.x_shape), generator=gen) * 2 - 1 for _ in range(2))
    a, b = 0.7, -1.3
    with torch.no_grad():
        lhs = op.A(a * x + b * z)
        rhs = a * op.A(x) + b * op.A(z)
    err = float((lhs - rhs).norm() / rhs.norm().clamp_min(1e-12))
    if not err <= rtol:
        raise OperatorError(f"user operator {where} is declared linear (linear = True) but is not: "
                            f"A(a x + b z) differs from a A(x) + b A(z) by {err:.2g} (relative) on random images; "
                            "drop linear = True or fix the forward model")


def load_user_operator(spec: str, shape: Sequence[int]) -> Operator:
    """Load ``path/to/file.py:function`` or ``module:function`` and build the operator for images of ``shape``.

    Args:
        spec: ``SOURCE:FUNCTION`` (see the module docstring).
        shape: ``(C, H, W)``, passed to the function as a tuple of ints.

    Returns:
        The user's :class:`Operator`, or a :class:`CallableOperator` / :class:`LinearCallableOperator` around the
        returned callable (``task`` is ``spec``).

    Raises:
        OperatorError: One line naming the file or module, the function and the problem.
    """
    factory, func_name, where = load_factory(spec, "user operator", OperatorError)
    dims = tuple(int(s) for s in shape)
    try:
        made = factory(dims)
    except Exception as exc:  # noqa: BLE001
        raise OperatorError(f"user operator {where}: {func_name}({dims}) raised {type(exc).__name__}: {exc}") from None
    if isinstance(made, Operator):
        if tuple(made.x_shape) != dims:
            raise OperatorError(f"user operator {where}: {func_name}({dims}) returned an operator for images "
                                f"{list(made.x_shape)}, not {list(dims)}")
        _probe(made.A, dims, where)
        if isinstance(made, LinearOperator):
            _check_linear(made, where)
        return made
    if not callable(made):
        raise OperatorError(f"user operator {where}: {func_name}({dims}) must return an Operator or a callable "
                            f"x -> y, got {type(made).__name__}")
    y_shape = _probe(made, dims, where)
    if getattr(made, "linear", False) is True:
        op: Operator = LinearCallableOperator(made, dims, y_shape, spec.strip())
        _check_linear(op, where)
        return op
    return CallableOperator(made, dims, y_shape, spec.strip())
