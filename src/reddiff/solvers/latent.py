"""Latent RED-diff: RED-diff with a prior in an autoencoder's latent space (:class:`reddiff.LatentPrior`).

The variational posterior is a Dirac at a latent ``z`` (decoded ``D(z)``); the regulariser is RED-diff's, on ``z``:
``w_t <sg(eps_theta(z_t, t) - eps), z>`` with ``z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` and
``w_t = lam f(sigma_t / alpha_t)`` (Mardani et al. 2024, eq. 9-10, in latent space), so the denoiser runs forward
only; gradients pass through the decoder alone. Two forms (``RedDiff.latent_mode``):

*direct* optimises ``z`` on ::

    obs_weight * nll(y, A(D(z)))  +  w_t <sg(eps_hat - eps), z>

starting from ``z = E(x_start)`` (``x_start``: the pixel start of ``init``, e.g. ``A_dagger(y)``). With ``D = E = I``
it is pixel RED-diff step for step.

*split* (the default) keeps a pixel variable ``x`` beside ``z`` and minimises ::

    obs_weight * nll(y, A(x))  +  rho/2 ||x - D(z)||^2  +  w_t <sg(eps_hat - eps), z>

by alternating, every step, a latent step (one optimizer step on ``z`` for ``rho/2 ||x - D(z)||^2`` plus the
regulariser: through the decoder only) and a pixel step on ``x`` for ``obs_weight * nll(y, A(x)) + rho/2
||x - D(z)||^2`` with ``D(z)`` of this step's decoder pass, taken before the latent update (a Jacobi-style
alternation: one decoder pass per step; with ``sigma_x0 > 0`` it is the decoded draw ``D(z + sigma_x0 n)``), through
``A`` only. For an SVD-structured operator with
Gaussian noise the pixel step is solved exactly (per singular direction ``i``: ``c_i = (k s_i b_i + r e_i) /
(k s_i^2 + r)``, ``b = U^T y``, ``e = V^T D(z)``, ``k`` and ``r`` the data and coupling weights; directions the
operator does not see keep ``D(z)``); otherwise it is one step of the optimizer with ``pixel_lr``. Nonlinear
operators (JPEG, phase retrieval) thus only ever meet the pixel variable. The estimate is ``x``. ``x`` starts at
``x_start`` and ``z`` at ``E(x_start)``.

The norms are means over their elements with the default ``data_term="mean"`` (per sample, as pixel RED-diff's),
sums with the likelihood's scale with ``data_term="paper"``. ``init="zeros"`` and ``init="random"`` start the
latent (``z = 0``, ``z ~ N(0, I)``) and ``x = D(z)``. The callback's ``StepInfo.x`` is ``x`` after the step
(split), or the decoded latent of the step before its update (direct: the decoder pass the step made anyway); the
returned estimate is ``D(z)`` of the final ``z``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..errors import SolverError
from ..noise import GaussianNoise
from ..operators.base import SVDOperator
from .base import (
    Callback,
    GeneratorLike,
    Problem,
    StepInfo,
    check_finite,
    per_sample_generators,
    randn_like_per_sample,
    step_context,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..latent import LatentPrior
    from .reddiff import RedDiff

__all__ = ["latent_reddiff", "exact_pixel_step", "pixel_weights", "pixel_loss", "data_term"]


def exact_pixel_step(op: SVDOperator, y: torch.Tensor, d: torch.Tensor, k_data: float, k_rho: float) -> torch.Tensor:
    """``argmin_x k_data/2 ||y - A x||^2 + k_rho/2 ||x - d||^2`` for an SVD operator ``A = U diag(s) V^T``.

    Args:
        op: the operator.
        y: the measurement ``[B, *y_shape]``.
        d: the decoded latent ``[B, *x_shape]``.
        k_data: weight of the data term (>= 0).
        k_rho: weight of the coupling (> 0).
    """
    s = op._cast(op.singulars(), d)
    c = op.Vt(d)
    b = op.Ut(y)
    r = s.numel()
    seen = (k_data * s * b + k_rho * c[:, :r]) / (k_data * s * s + k_rho)
    return op.V(torch.cat([seen, c[:, r:]], dim=1))


def pixel_weights(solver: RedDiff, problem: Problem, noise: Any) -> tuple[float, float]:
    """``(k_data, k_rho)``: the weights of ``||y - A x||^2 / 2`` and ``||x - D(z)||^2 / 2`` in the split form's
    pixel loss (:func:`pixel_loss`) for a Gaussian likelihood, as :func:`exact_pixel_step` takes them."""
    if solver.data_term == "paper":
        return solver.obs_weight / noise.sigma_y**2, solver.rho
    m, n = math.prod(problem.y.shape[1:]), math.prod(problem.x_shape[1:])
    return solver.obs_weight * solver.obs_scale(problem) / m, solver.rho / n


def pixel_loss(solver: RedDiff, problem: Problem, noise: Any, x: torch.Tensor, target: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The split form's pixel loss per sample, ``obs_weight * nll(y, A(x)) + rho/2 ||x - target||^2`` (means, or
    sums with ``data_term="paper"``), and its data part."""
    obs = data_term(solver, problem, noise, problem.operator.A(x))
    return solver.obs_weight * obs + 0.5 * solver.rho * per_sample(solver, (x - target).pow(2)), obs


def per_sample(solver: RedDiff, t: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``t`` (sum with ``data_term="paper"``): how every term of the loss is normalised."""
    dims = tuple(range(1, t.dim()))
    return t.sum(dim=dims) if solver.data_term == "paper" else t.mean(dim=dims)


def data_term(solver: RedDiff, problem: Problem, noise: Any, ax: torch.Tensor) -> torch.Tensor:
    """The noise model's likelihood term per sample, in the solver's normalisation (without ``obs_weight``)."""
    if solver.data_term == "paper":
        return noise.nll_sum(problem.y, ax)
    return solver.obs_scale(problem) * noise.nll(problem.y, ax)


def _size(problem: Problem) -> tuple[int, int] | None:
    shape = problem.x_shape
    return (int(shape[-2]), int(shape[-1])) if len(shape) == 4 else None


def latent_reddiff(solver: RedDiff, prior: LatentPrior, problem: Problem, generator: GeneratorLike = None,
                   callback: Callback | None = None) -> torch.Tensor:
    """Run RED-diff with a latent prior in ``solver.latent_mode`` (see the module docstring); the estimate in pixels.

    Raises:
        SolverError: settings latent priors do not support, data the autoencoder cannot take, or divergence.
    """
    if solver.repulsion > 0:
        raise SolverError("RED-diff's repulsion among samples is not available with latent priors; use "
                          "--repulsion 0")
    noise = solver.data_noise(problem)
    op, y = problem.operator, problem.y
    try:
        latent_shape = prior.latent_shape(problem.x_shape)
    except Exception as exc:  # the autoencoder's one-line refusal
        raise SolverError(f"{solver.label}: {exc}") from None
    size = _size(problem)
    gens = per_sample_generators(generator, problem.batch_size, y.device)
    timesteps = solver.grid(prior)
    split = solver.latent_mode == "split"
    hint = f"try a smaller lr (now {solver.lr})"

    with torch.no_grad(), step_context(solver.label, -1, solver.steps, timesteps[0].item()):
        note = None
        if solver.init in ("zeros", "random"):
            empty = torch.zeros(latent_shape, dtype=y.dtype, device=y.device)
            z0 = empty if solver.init == "zeros" else randn_like_per_sample(empty, gens)
            x_start = prior.decode(z0, size) if split else None
        else:
            x_start, note = solver.start(problem, gens)
            z0 = prior.encode(x_start)
        z0 = z0.detach().clone()
    check_finite(solver.label, 0, timesteps[0].item(), z0, "initial latent", "check the measurement")
    z = torch.nn.Parameter(z0)
    opt_z = solver.make_optimizer([z], solver.lr)
    x = opt_x = None
    if split:
        x = torch.nn.Parameter(x_start.detach().clone().to(y.dtype))
        opt_x = solver.make_optimizer([x], solver.pixel_lr or solver.lr)

    n_steps = len(timesteps)
    exact = split and isinstance(op, SVDOperator) and type(noise) is GaussianNoise
    if exact:
        k_data, k_rho = pixel_weights(solver, problem, noise)
    last: torch.Tensor | None = None
    from .reddiff import LR_SCHEDULES

    for i, t in enumerate(timesteps.tolist()):
        with step_context(solver.label, i, n_steps, t):
            factor = LR_SCHEDULES[solver.lr_schedule](i / n_steps)
            # 1. z0 ~ q: z itself (Dirac), or z + sigma_x0 n
            z_0 = z + solver.sigma_x0 * randn_like_per_sample(z, gens) if solver.sigma_x0 > 0 else z
            # 2. diffuse the latent, 3. denoise it (no gradient through the denoiser)
            eps = randn_like_per_sample(z, gens)
            a_t = prior.schedule.abar_of(t)
            with torch.no_grad():
                eps_hat = prior.eps(math.sqrt(a_t) * z_0.detach() + math.sqrt(1.0 - a_t) * eps, t)
            # 4. SNR-based weight, 5. the regulariser on z
            w_t = solver.weight(a_t)
            score = (eps_hat - eps).detach() * z_0
            reg = per_sample(solver, score)
            decoded = prior.decode(z_0, size)  # through the decoder: the only backward pass
            if split:
                couple = 0.5 * solver.rho * per_sample(solver, (x.detach() - decoded).pow(2))
                loss = (w_t * reg + couple).sum()
                obs = None
            else:
                obs = data_term(solver, problem, noise, op.A(decoded))
                loss = (w_t * reg + solver.obs_weight * obs).sum()
            check_finite(solver.label, i, t, loss.detach(), "loss", hint)
            # 6. one optimizer step on z
            for group in opt_z.param_groups:
                group["lr"] = solver.lr * factor
            opt_z.zero_grad(set_to_none=True)
            loss.backward()
            if solver.returns == "last_x0":
                last = (x if split else decoded).detach().clone()
            opt_z.step()
            # 7. (split) the pixel step: data term and coupling to this step's D(z), through A only
            if split:
                target = decoded.detach()
                if exact:
                    with torch.no_grad():
                        x.copy_(exact_pixel_step(op, y, target, k_data, k_rho))
                        if callback is not None:  # reported only
                            obs = data_term(solver, problem, noise, op.A(x))
                else:
                    loss_x, obs = pixel_loss(solver, problem, noise, x, target)
                    loss_x = loss_x.sum()
                    check_finite(solver.label, i, t, loss_x.detach(), "pixel loss", hint)
                    for group in opt_x.param_groups:
                        group["lr"] = (solver.pixel_lr or solver.lr) * factor
                    opt_x.zero_grad(set_to_none=True)
                    loss_x.backward()
                    opt_x.step()
        if callback is not None:
            losses: dict[str, Any] = {"loss": float(loss.detach()), "reg": float(reg.detach().sum()),
                                      "obs": float(obs.detach().sum()), "weight": w_t}
            if split:
                losses["couple"] = float(couple.detach().sum())
            callback(StepInfo(step=i, num_steps=n_steps, t=t, x=(x if split else decoded).detach(), losses=losses,
                              note=note if i == 0 else None))
    if solver.returns == "last_x0" and last is not None:
        out = last
    elif split:
        out = x.detach()
    else:
        with torch.no_grad():
            out = prior.decode(z.detach(), size)
    check_finite(solver.label, n_steps - 1, timesteps[-1].item(), out, "estimate", hint)
    low_high = prior.pixel_range
    return out.clamp(*low_high) if solver.clip_x0 and low_high is not None else out
