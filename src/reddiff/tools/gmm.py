"""Exact references: Gaussian-mixture diffusion priors, their exact posteriors, and a sliced Wasserstein distance.

For a mixture prior ``p0 = sum_k w_k N(m_k, S_k)`` the VP-noised marginal is again a mixture,

    p_t(x_t) = sum_k w_k N(x_t; sqrt(abar_t) m_k, abar_t S_k + (1 - abar_t) I),

so the ideal noise predictor ``E[eps | x_t] = -sqrt(1 - abar_t) grad log p_t(x_t)`` (Tweedie / Vincent 2011) is
known in closed form at every ``t``. For a linear measurement ``y = A x + sigma_y v`` the posterior is again a
mixture with the Gaussian conditioning formulas per component (e.g. Bishop, PRML, eq. 2.113-2.117) and weights
``w_k N(y; A m_k, sigma_y^2 I + A S_k A^T)``. These are the references the samplers are tested against (the setup
of the MCGdiff paper, Cardoso et al. 2023, arXiv 2308.07983).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ReddiffError
from ..prediction import canonical_prediction, from_eps_x0
from ..prior import DiffusionPrior
from ..schedule import NoiseSchedule, VPSchedule

__all__ = ["GaussianMixture", "GaussianMixturePrior", "GaussianMixtureDenoiser", "sliced_wasserstein",
           "dense_matrix", "ring_problem", "modes_covered"]

_LOG_2PI = math.log(2.0 * math.pi)


def _as64(x: Any) -> Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


def _check_mixture(means: Tensor, covariances: Tensor, weights: Tensor) -> None:
    if means.dim() != 2:
        raise ReddiffError(f"means must be [K, d], got shape {tuple(means.shape)}")
    k, d = means.shape
    if tuple(covariances.shape) != (k, d, d):
        raise ReddiffError(f"covariances must be [K, d, d] = [{k}, {d}, {d}], got shape {tuple(covariances.shape)}")
    if tuple(weights.shape) != (k,):
        raise ReddiffError(f"weights must be [K] = [{k}], got shape {tuple(weights.shape)}")
    if not (torch.isfinite(means).all() and torch.isfinite(covariances).all() and torch.isfinite(weights).all()):
        raise ReddiffError("mixture parameters contain NaN or Inf")
    if bool((weights < 0).any()) or not float(weights.sum()) > 0:
        raise ReddiffError("mixture weights must be >= 0 with a positive sum")


def _isotropic_scales(covariances: Tensor) -> Tensor | None:
    """``c_k`` when every ``S_k == c_k I`` exactly (fast path), else None."""
    d = covariances.shape[-1]
    c = torch.diagonal(covariances, dim1=-2, dim2=-1).mean(-1)
    eye = torch.eye(d, dtype=covariances.dtype, device=covariances.device)
    if bool(torch.equal(covariances, c[:, None, None] * eye)):
        return c
    return None


def _psd_factor(cov: Tensor) -> Tensor:
    """A square root ``L`` with ``L L^T = cov`` for PSD (possibly singular) ``cov`` [..., d, d]."""
    lam, q = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
    return q * lam.clamp(min=0).sqrt().unsqueeze(-2)


def _safe_cholesky(cov: Tensor) -> Tensor:
    """Cholesky factor, adding the smallest diagonal jitter (relative 1e-12 .. 1e-6) needed for singular ``cov``."""
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    chol, info = torch.linalg.cholesky_ex(cov)
    if not bool((info != 0).any()):
        return chol
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).abs().mean(-1).clamp(min=1e-300)[..., None, None]
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    for rel in (1e-12, 1e-10, 1e-8, 1e-6):
        chol, info = torch.linalg.cholesky_ex(cov + rel * scale * eye)
        if not bool((info != 0).any()):
            return chol
    raise ReddiffError("covariance is not positive semi-definite")


class GaussianMixture:
    """A Gaussian mixture ``sum_k w_k N(m_k, S_k)`` in float64: sampling and log density.

    Args:
        means: ``[K, d]``.
        covariances: ``[K, d, d]`` symmetric positive semi-definite (singular ones can be sampled; their
            :meth:`log_prob` uses a small diagonal jitter).
        weights: ``[K]`` non-negative; normalised to sum to 1.
    """

    def __init__(self, means: Tensor, covariances: Tensor, weights: Tensor) -> None:
        means, covariances, weights = _as64(means), _as64(covariances), _as64(weights)
        _check_mixture(means, covariances, weights)
        self.means = means
        self.covariances = 0.5 * (covariances + covariances.transpose(-1, -2))
        self.weights = weights / weights.sum()
        self._iso = _isotropic_scales(self.covariances)
        self._factor: Tensor | None = None
        self._chol: Tensor | None = None

    @property
    def num_components(self) -> int:
        """K."""
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        """d."""
        return int(self.means.shape[1])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws, float64 ``[n, d]`` (component by ``multinomial``, then ``m_k + L_k z``)."""
        comps = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        z = torch.randn(int(n), self.dim, generator=generator, dtype=torch.float64)
        if self._iso is not None:
            return self.means[comps] + self._iso[comps].clamp(min=0).sqrt()[:, None] * z
        if self._factor is None:
            self._factor = _psd_factor(self.covariances)
        x = torch.empty_like(z)
        for k in torch.unique(comps).tolist():
            idx = comps == k
            x[idx] = self.means[k] + z[idx] @ self._factor[k].T
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density at ``x`` ``[N, d]`` (or ``[N, ...]`` flattening to ``d``), float64 ``[N]``; differentiable."""
        x = torch.as_tensor(x).to(torch.float64).reshape(x.shape[0], -1)  # differentiable in x
        if x.shape[1] != self.dim:
            raise ReddiffError(f"log_prob needs points of dimension {self.dim}, got {x.shape[1]}")
        log_w = self.weights.clamp(min=1e-300).log()
        if self._iso is not None and bool((self._iso > 0).all()):
            v = self._iso
            sq = (x * x).sum(1, keepdim=True) - 2 * x @ self.means.T + (self.means * self.means).sum(1)
            comp = -0.5 * sq.clamp(min=0) / v - 0.5 * self.dim * (_LOG_2PI + v.log())
        else:
            if self._chol is None:
                self._chol = _safe_cholesky(self.covariances)
            diff = (x[None] - self.means[:, None]).transpose(1, 2)  # [K, d, N]
            w = torch.linalg.solve_triangular(self._chol, diff, upper=False)
            logdet = 2 * torch.diagonal(self._chol, dim1=-2, dim2=-1).log().sum(-1)
            comp = (-0.5 * (w * w).sum(1) - 0.5 * (self.dim * _LOG_2PI + logdet)[:, None]).T  # [N, K]
        return torch.logsumexp(comp + log_w, dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities ``p(k | x)``, float64 ``[N, K]``."""
        x = _as64(x).reshape(x.shape[0], -1)
        parts = [GaussianMixture(self.means[k : k + 1], self.covariances[k : k + 1], torch.ones(1, dtype=torch.float64))
                 .log_prob(x) for k in range(self.num_components)]
        logits = torch.stack(parts, 1) + self.weights.clamp(min=1e-300).log()
        return torch.softmax(logits, dim=1)

    def noised(self, abar_t: float) -> GaussianMixture:
        """The VP-noised mixture ``sum_k w_k N(sqrt(abar_t) m_k, abar_t S_k + (1 - abar_t) I)``."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(math.sqrt(abar_t) * self.means, abar_t * self.covariances + (1 - abar_t) * eye,
                               self.weights)


class GaussianMixtureDenoiser(nn.Module):
    """The exact denoiser of a noised mixture, answering as a network of any prediction type would.

    In the VP-equivalent variable ``x = sqrt(abar) x0 + sqrt(1 - abar) eps`` the exact noise prediction is
    ``E[eps | x] = -sqrt(1 - abar) grad log p(x)``, with ``p`` the mixture noised to ``abar``. It is computed in float64
    (whatever the input dtype; the output is cast back): per component the log density and score of
    ``N(sqrt(abar) m_k, C_k)``, ``C_k = abar S_k + (1 - abar) I`` (Cholesky solves, or scalars when every ``S_k`` is a
    multiple of ``I``), combined with log-sum-exp responsibilities. Differentiable in the input (DPS and ΠGDM
    backpropagate through it). Inputs ``[B, ...]`` are flattened to ``[B, d]``.

    Called as a network ``forward(x, time)`` for a schedule and a prediction type (see :mod:`reddiff.prediction`): the
    input is the schedule's own variable at its time (for ``edm`` the variance-exploding variable at ``sigma /
    alpha``), and the output is that type's exact prediction.

    Args:
        means: ``[K, d]``.
        covariances: ``[K, d, d]``.
        weights: ``[K]`` (normalised).
        schedule: the noise schedule.
        prediction: what to output.
    """

    def __init__(self, means: Tensor, covariances: Tensor, weights: Tensor, schedule: NoiseSchedule,
                 prediction: str = "epsilon") -> None:
        super().__init__()
        means, covariances, weights = _as64(means), _as64(covariances), _as64(weights)
        _check_mixture(means, covariances, weights)
        self.register_buffer("means", means)
        self.register_buffer("covariances", 0.5 * (covariances + covariances.transpose(-1, -2)))
        self.register_buffer("log_weights", (weights / weights.sum()).clamp(min=1e-300).log())
        self.schedule = schedule
        self.prediction = canonical_prediction(prediction)
        #: today's exact path: a VP table and ε output.
        self._vp_eps = isinstance(schedule, VPSchedule) and self.prediction == "epsilon"
        iso = _isotropic_scales(self.covariances)
        self.isotropic = iso is not None
        self.register_buffer("iso_scales", iso if iso is not None else torch.zeros(means.shape[0], dtype=torch.float64))

    def score(self, x: Tensor, abar_t: float) -> Tensor:
        """``grad log p_t(x)`` for float64 ``x`` ``[B, d]`` at one noise level ``abar_t``."""
        mu = math.sqrt(abar_t) * self.means  # [K, d]
        d = x.shape[1]
        if self.isotropic:
            v = abar_t * self.iso_scales + (1.0 - abar_t)  # [K]
            sq = (x * x).sum(1, keepdim=True) - 2 * x @ mu.T + (mu * mu).sum(1)  # [B, K]
            logits = self.log_weights - 0.5 * sq.clamp(min=0) / v - 0.5 * d * v.log()
            gamma_over_v = torch.softmax(logits, dim=1) / v  # [B, K]
            return gamma_over_v @ mu - gamma_over_v.sum(1, keepdim=True) * x
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        chol = torch.linalg.cholesky(abar_t * self.covariances + (1.0 - abar_t) * eye)  # [K, d, d]
        diff = (x[None] - mu[:, None]).transpose(1, 2)  # [K, d, B]
        w = torch.linalg.solve_triangular(chol, diff, upper=False)
        logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)  # [K]
        logits = (self.log_weights[:, None] - 0.5 * (w * w).sum(1) - 0.5 * logdet[:, None]).T  # [B, K]
        gamma = torch.softmax(logits, dim=1)
        comp_scores = -torch.linalg.solve_triangular(chol.transpose(-1, -2), w, upper=True)  # [K, d, B]
        return torch.einsum("bk,kdb->bd", gamma, comp_scores)

    def _eps(self, x: Tensor, abar: Tensor) -> Tensor:
        """``E[eps | x]`` for VP-equivalent float64 ``x`` ``[B, d]`` at per-sample levels ``abar`` ``[B]``."""
        out = torch.zeros_like(x)
        for level in torch.unique(abar).tolist():
            idx = (abar == level).nonzero().flatten()
            out = out.index_copy(0, idx, -math.sqrt(1.0 - level) * self.score(x[idx], level))
        return out

    def forward(self, x_in: Tensor, time: Tensor) -> Tensor:
        """The exact prediction for ``x_in`` ``[B, ...]`` at ``time`` ``[B]``; same shape and dtype as ``x_in``."""
        shape, dtype = x_in.shape, x_in.dtype
        x = x_in.reshape(shape[0], -1).to(torch.float64)
        if x.shape[1] != self.means.shape[1]:
            raise ReddiffError(
                f"the mixture prior is {self.means.shape[1]}-dimensional, got inputs of size {x.shape[1]}"
            )
        time = torch.as_tensor(time, device=x.device).reshape(-1).expand(shape[0])
        if self._vp_eps:
            abar = self.schedule.abar.to(x.device)[time.long()]
            return self._eps(x, abar).reshape(shape).to(dtype)
        if self.prediction == "edm":  # the variance-exploding variable at noise level sigma / alpha
            alpha, sigma = torch.ones_like(time, dtype=torch.float64), time.to(torch.float64)
        else:
            alpha, sigma = self.schedule.alpha_sigma(time.cpu())
            alpha, sigma = alpha.to(x.device), sigma.to(x.device)
        alpha, sigma = alpha[:, None], sigma[:, None]
        norm2 = alpha * alpha + sigma * sigma
        abar = (alpha * alpha / norm2)[:, 0]
        x_vp = x / norm2.sqrt()
        eps = self._eps(x_vp, abar)
        ab = abar[:, None]
        x0 = (x_vp - (1.0 - ab).sqrt() * eps) / ab.sqrt()
        return from_eps_x0(self.prediction, eps, x0, alpha, sigma).reshape(shape).to(dtype)


def dense_matrix(operator: Any, dim: int | None = None) -> Tensor:
    """The float64 matrix ``[m, d]`` of a linear operator (its ``matrix``, else ``A`` applied to the identity)."""
    mat = getattr(operator, "matrix", None)
    if isinstance(mat, Tensor) and mat.dim() == 2:
        return mat.detach().to(torch.float64)
    if not getattr(operator, "linear", False):
        name = getattr(operator, "task", type(operator).__name__)
        raise ReddiffError(f"the exact posterior needs a linear operator; {name!r} is not linear")
    x_shape = tuple(getattr(operator, "x_shape", (dim,)))
    d = math.prod(x_shape)
    if dim is not None and d != dim:
        raise ReddiffError(f"operator acts on {d} unknowns but the prior is {dim}-dimensional")
    eye = torch.eye(d, dtype=torch.float64)
    with torch.no_grad():
        out = operator.A(eye.reshape(d, *x_shape).to(torch.float64))
    return out.reshape(d, -1).T.contiguous()


class GaussianMixturePrior(DiffusionPrior):
    """A Gaussian-mixture prior with the exact noise predictor, usable wherever a :class:`DiffusionPrior` is.

    ``.network(x_t, t)`` is a :class:`GaussianMixtureDenoiser`; a single component gives the Gaussian case.

    Args:
        means: ``[K, d]``.
        covariances: ``[K, d, d]`` symmetric positive definite.
        weights: ``[K]`` non-negative (normalised).
        schedule: the noise schedule, any family (default: VP, linear betas, T = 1000).
        prediction: the prediction type its network answers in (default ``epsilon``); every type gives the same
            exact ``(eps, x0)``, which is what the parameterisation-invariance tests check.
    """

    def __init__(self, means: Tensor, covariances: Tensor, weights: Tensor, schedule: NoiseSchedule | None = None,
                 prediction: str = "epsilon") -> None:
        schedule = schedule if schedule is not None else VPSchedule()
        mixture = GaussianMixture(means, covariances, weights)
        network = GaussianMixtureDenoiser(mixture.means, mixture.covariances, mixture.weights, schedule, prediction)
        super().__init__(network, schedule, info={"name": "gaussian-mixture", "components": mixture.num_components,
                                                  "dim": mixture.dim}, data_range=None, prediction=prediction)
        self.mixture = mixture

    @property
    def means(self) -> Tensor:
        """``[K, d]`` float64."""
        return self.mixture.means

    @property
    def covariances(self) -> Tensor:
        """``[K, d, d]`` float64."""
        return self.mixture.covariances

    @property
    def weights(self) -> Tensor:
        """``[K]`` float64, summing to 1."""
        return self.mixture.weights

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws from the prior ``p0``, float64 ``[n, d]``."""
        return self.mixture.sample(n, generator)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p0(x)``, float64 ``[N]``."""
        return self.mixture.log_prob(x)

    def noised(self, t: int | float) -> GaussianMixture:
        """The exact marginal at timestep ``t``, in the VP-equivalent variable (see :mod:`reddiff.schedule`)."""
        return self.mixture.noised(self.schedule.abar_of(t))

    def posterior(self, operator: Any, y: Tensor, sigma_y: float, jitter: float = 1e-10) -> GaussianMixture:
        """The exact posterior ``p(x | y)`` for ``y = A x + sigma_y v``, ``v ~ N(0, I)``, ``A`` linear.

        Per component (Gaussian conditioning): ``S = A S_k A^T + sigma_y^2 I``, ``K = S_k A^T S^{-1}``, mean
        ``m_k + K (y - A m_k)``, covariance ``S_k - K A S_k``; weights ``∝ w_k N(y; A m_k, S)``.

        ``sigma_y = 0`` is handled by adding ``jitter * max(1, mean diag(A S_k A^T))`` to the diagonal of ``S``
        (which must be invertible); the covariances are then (numerically) singular along the observed directions:
        :meth:`GaussianMixture.sample` handles that exactly, :meth:`GaussianMixture.log_prob` with a tiny jitter.

        Args:
            operator: a linear operator on ``[B, d]`` (or ``[B, ...]`` with ``d`` unknowns), e.g. a
                :class:`reddiff.MatrixOperator`; its dense matrix is built by applying it to the identity.
            y: one measurement, ``[1, m]`` (or ``[m]``).
            sigma_y: the noise standard deviation (>= 0).
            jitter: relative diagonal jitter used only when ``sigma_y == 0``.

        Returns:
            The posterior as a :class:`GaussianMixture` (float64).
        """
        if not (math.isfinite(float(sigma_y)) and float(sigma_y) >= 0):
            raise ReddiffError(f"sigma_y must be a finite number >= 0, got {sigma_y}")
        a = dense_matrix(operator, self.mixture.dim)
        y = _as64(y)
        if y.dim() == 2 and y.shape[0] != 1:
            raise ReddiffError(f"posterior takes one measurement [1, m], got a batch of {y.shape[0]}")
        y = y.reshape(-1)
        if y.numel() != a.shape[0]:
            raise ReddiffError(f"y has {y.numel()} entries but the operator measures {a.shape[0]}")
        m_k, s_k, w_k = self.means, self.covariances, self.weights
        asa = a @ s_k @ a.T  # [K, m, m]
        eye_m = torch.eye(a.shape[0], dtype=torch.float64)
        noise = float(sigma_y) ** 2
        if noise == 0.0:
            noise = jitter * max(1.0, float(torch.diagonal(asa, dim1=-2, dim2=-1).mean()))
        s = asa + noise * eye_m
        chol = torch.linalg.cholesky(0.5 * (s + s.transpose(-1, -2)))
        resid = y - m_k @ a.T  # [K, m]
        sa = s_k @ a.T  # [K, d, m]
        gain = torch.cholesky_solve(sa.transpose(-1, -2), chol).transpose(-1, -2)  # S_k A^T S^{-1}: [K, d, m]
        means = m_k + (gain @ resid[..., None]).squeeze(-1)
        covs = s_k - gain @ sa.transpose(-1, -2)
        w = torch.linalg.solve_triangular(chol, resid[..., None], upper=False).squeeze(-1)
        logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        log_evidence = -0.5 * (w * w).sum(-1) - 0.5 * logdet - 0.5 * a.shape[0] * _LOG_2PI
        logits = w_k.clamp(min=1e-300).log() + log_evidence
        weights = torch.softmax(logits, dim=0)
        return GaussianMixture(means, 0.5 * (covs + covs.transpose(-1, -2)), weights)


def sliced_wasserstein(a: Tensor, b: Tensor, directions: int = 100, generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2 distance between two sample sets (Rabin et al. 2011; Bonneel et al. 2015).

    ``SW_2(a, b) = ( mean_theta W_2^2(theta^T a, theta^T b) )^{1/2}`` over ``directions`` random unit vectors; each
    1-D ``W_2`` compares sorted projections (equal sizes) or, for different sizes, the quantiles at the levels
    ``(i + 1/2) / n``, ``n = max(len(a), len(b))``. Computed in float64.

    Args:
        a: samples ``[N, d]`` (or ``[N, ...]``, flattened).
        b: samples ``[M, d]``.
        directions: number of random projection directions.
        generator: draws the directions; None uses a fixed seed (0) so the metric is deterministic.

    Returns:
        The distance as a Python float.
    """
    a = _as64(a).reshape(a.shape[0], -1).cpu()
    b = _as64(b).reshape(b.shape[0], -1).cpu()
    if a.shape[1] != b.shape[1]:
        raise ReddiffError(f"sample sets have different dimensions: {a.shape[1]} and {b.shape[1]}")
    if a.shape[0] < 1 or b.shape[0] < 1 or int(directions) < 1:
        raise ReddiffError("sliced_wasserstein needs non-empty sample sets and directions >= 1")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    theta = torch.randn(int(directions), a.shape[1], generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    pa, pb = (a @ theta.T).sort(dim=0).values, (b @ theta.T).sort(dim=0).values
    if pa.shape[0] != pb.shape[0]:
        n = max(pa.shape[0], pb.shape[0])
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        pa, pb = torch.quantile(pa, q, dim=0), torch.quantile(pb, q, dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())


def ring_problem(seed: int, samples: int, modes: int = 8, radius: float = 2.0, variance: float = 0.05,
                 sigma_y: float = 0.1) -> tuple[GaussianMixturePrior, Any, GaussianMixture]:
    """A posterior with ``modes`` equal, well separated modes, for measuring how many of them a group of samples
    covers: the prior's components (variance ``variance`` I) sit on a circle of ``radius`` in coordinates 3 and 4
    of R^4; the measurement observes coordinates 1 and 2 (all components agree there) with noise ``sigma_y``, drawn
    from ``seed``.

    Returns:
        ``(prior, problem, posterior)``: the problem holds the measurement ``samples`` times, as one group.
    """
    from ..operators.matrix import MatrixOperator
    from ..solvers.base import Problem

    f64 = torch.float64
    angles = torch.arange(modes, dtype=f64) * 2 * math.pi / modes
    means = torch.zeros(modes, 4, dtype=f64)
    means[:, 2], means[:, 3] = radius * torch.cos(angles), radius * torch.sin(angles)
    covs = variance * torch.eye(4, dtype=f64).expand(modes, 4, 4).clone()
    prior = GaussianMixturePrior(means, covs, torch.ones(modes, dtype=f64))
    a = torch.zeros(2, 4, dtype=f64)
    a[0, 0] = a[1, 1] = 1.0
    op = MatrixOperator(a)
    y = sigma_y * torch.randn(1, 2, generator=torch.Generator().manual_seed(seed), dtype=f64)
    problem = Problem(y.expand(samples, 2).clone(), op, sigma_y, groups=(0,) * samples)
    return prior, problem, prior.posterior(op, y, sigma_y)


def modes_covered(posterior: GaussianMixture, x: Tensor, within: float = 3.0) -> tuple[int, float]:
    """How many of the posterior's components hold a sample, counting only samples within ``within`` standard
    deviations (of the component's largest) of the mean of their most responsible component; and the share of
    samples that lie so inside a mode."""
    x = _as64(x).reshape(x.shape[0], -1)
    comp = posterior.responsibilities(x).argmax(dim=1)
    scale = torch.linalg.eigvalsh(posterior.covariances[comp]).amax(dim=-1).sqrt()
    inside = (x - posterior.means[comp]).norm(dim=1) < within * scale * math.sqrt(x.shape[1])
    return len(set(comp[inside].tolist())), float(inside.double().mean())
