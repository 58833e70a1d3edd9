"""Exact references: the Gaussian-mixture prior's noise predictor and posterior, MatrixOperator, sliced Wasserstein."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from reddiff.errors import ReddiffError
from reddiff.operators import make_operator
from reddiff.operators.matrix import MatrixOperator
from reddiff.tools.gmm import GaussianMixture, GaussianMixturePrior, dense_matrix, sliced_wasserstein

F64 = torch.float64


def _random_mixture(k: int, d: int, seed: int, isotropic: bool = False):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g, dtype=F64)
    if isotropic:
        covs = torch.stack([(0.3 + i) * torch.eye(d, dtype=F64) for i in range(k)])
    else:
        l = torch.randn(k, d, d, generator=g, dtype=F64)
        covs = l @ l.transpose(1, 2) / d + 0.2 * torch.eye(d, dtype=F64)
    weights = torch.rand(k, generator=g, dtype=F64) + 0.1
    return means, covs, weights


def _scipy_noised_logpdf(means, covs, weights, abar, x: np.ndarray) -> float:
    """log p_t(x) of the noised mixture, written independently with scipy."""
    d = means.shape[1]
    w = weights / weights.sum()
    parts = [
        math.log(w[k]) + stats.multivariate_normal(math.sqrt(abar) * means[k], abar * covs[k] + (1 - abar) * np.eye(d))
        .logpdf(x)
        for k in range(len(w))
    ]
    return float(logsumexp(np.array(parts)))


@pytest.mark.parametrize("isotropic", [False, True])
def test_eps_is_the_exact_score_by_finite_differences(isotropic):
    means, covs, weights = _random_mixture(3, 3, seed=1, isotropic=isotropic)
    prior = GaussianMixturePrior(means, covs, weights)
    g = torch.Generator().manual_seed(2)
    x = 2.5 * torch.randn(4, 3, generator=g, dtype=F64)
    t = torch.tensor([0, 250, 600, 999])  # a different timestep per sample
    eps = prior.eps(x, t)
    h = 1e-5
    for i, ti in enumerate(t.tolist()):
        a = float(prior.schedule.abar[ti])
        xi = x[i].numpy()
        fd = np.array([
            (_scipy_noised_logpdf(means.numpy(), covs.numpy(), weights.numpy(), a, xi + h * e)
             - _scipy_noised_logpdf(means.numpy(), covs.numpy(), weights.numpy(), a, xi - h * e)) / (2 * h)
            for e in np.eye(3)
        ]).reshape(-1)
        expected = -math.sqrt(1 - a) * fd
        np.testing.assert_allclose(eps[i].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_eps_matches_autograd_and_is_differentiable():
    means, covs, weights = _random_mixture(4, 5, seed=3)
    prior = GaussianMixturePrior(means, covs, weights)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(4), dtype=F64, requires_grad=True)
    t = 400
    a = float(prior.schedule.abar[t])
    (score,) = torch.autograd.grad(prior.noised(t).log_prob(x).sum(), x)
    eps = prior.eps(x, t)
    torch.testing.assert_close(eps, -math.sqrt(1 - a) * score, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(eps.sum(), x)  # DPS / ΠGDM differentiate through the predictor
    assert torch.isfinite(grad).all()
    # float32 in -> float32 out, same numbers
    torch.testing.assert_close(prior.eps(x.detach().float(), t), eps.detach().float(), rtol=1e-5, atol=1e-5)


def test_eps_is_stable_far_from_every_component():
    means, covs, weights = _random_mixture(3, 4, seed=5)
    prior = GaussianMixturePrior(means, covs, weights)
    x = torch.full((2, 4), 1e3, dtype=F64)
    assert torch.isfinite(prior.eps(x, 0)).all()


def test_prior_samples_have_the_mixture_moments():
    means, covs, weights = _random_mixture(3, 2, seed=6)
    prior = GaussianMixturePrior(means, covs, weights)
    x = prior.sample(40000, torch.Generator().manual_seed(7))
    w = weights / weights.sum()
    mean = (w[:, None] * means).sum(0)
    cov = (w[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0) - torch.outer(mean, mean)
    torch.testing.assert_close(x.mean(0), mean, atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.15, rtol=0.05)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_single_gaussian_posterior_is_the_textbook_closed_form(m):
    d, sigma_y = 4, 0.4
    means, covs, _ = _random_mixture(1, d, seed=8)
    prior = GaussianMixturePrior(means, covs, torch.ones(1))
    g = torch.Generator().manual_seed(9)
    a = torch.randn(m, d, generator=g, dtype=F64)
    y = torch.randn(1, m, generator=g, dtype=F64)
    post = prior.posterior(MatrixOperator(a), y, sigma_y)
    # information form: P = S^-1 + A^T A / s^2, mean = P^-1 (S^-1 m + A^T y / s^2)
    s_inv = torch.linalg.inv(covs[0])
    cov = torch.linalg.inv(s_inv + a.T @ a / sigma_y**2)
    mean = cov @ (s_inv @ means[0] + a.T @ y[0] / sigma_y**2)
    torch.testing.assert_close(post.covariances[0], cov, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(post.means[0], mean, rtol=1e-9, atol=1e-11)
    assert post.weights.tolist() == pytest.approx([1.0])


def test_posterior_weights_and_density_match_direct_bayes_in_1d():
    means = torch.tensor([[-2.0], [1.5], [4.0]], dtype=F64)
    covs = torch.tensor([0.5, 1.2, 0.3], dtype=F64).view(3, 1, 1)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    prior = GaussianMixturePrior(means, covs, weights)
    a, sigma_y, y = 0.8, 0.6, 1.1
    post = prior.posterior(MatrixOperator(torch.tensor([[a]])), torch.tensor([[y]]), sigma_y)
    grid = np.linspace(-12, 12, 200001)
    lik = stats.norm(a * grid, sigma_y).pdf(y)
    joint_k = np.stack([w * stats.norm(m, math.sqrt(c)).pdf(grid) * lik
                        for w, m, c in zip(weights.numpy(), means[:, 0].numpy(), covs[:, 0, 0].numpy())])
    evid_k = np.trapezoid(joint_k, grid, axis=1)
    np.testing.assert_allclose(post.weights.numpy(), evid_k / evid_k.sum(), rtol=1e-6)
    pts = np.array([-3.0, 0.0, 1.0, 2.5])
    dens = np.interp(pts, grid, joint_k.sum(0) / evid_k.sum())
    np.testing.assert_allclose(post.log_prob(torch.tensor(pts)[:, None]).exp().numpy(), dens, rtol=1e-6)


def test_posterior_from_any_linear_operator_uses_its_dense_matrix():
    op = make_operator("sr:2", (1, 2, 4))  # block averaging on 8 unknowns, not a MatrixOperator
    mat = dense_matrix(op, 8)
    x = torch.randn(3, 1, 2, 4, dtype=F64, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(op.A(x).flatten(1), x.flatten(1) @ mat.T)
    means, covs, weights = _random_mixture(2, 8, seed=11)
    prior = GaussianMixturePrior(means, covs, weights)
    y = torch.randn(1, *op.y_shape, dtype=F64, generator=torch.Generator().manual_seed(12))
    p1 = prior.posterior(op, y, 0.2)
    p2 = prior.posterior(MatrixOperator(mat), y.flatten(1), 0.2)
    torch.testing.assert_close(p1.means, p2.means)
    torch.testing.assert_close(p1.covariances, p2.covariances)
    torch.testing.assert_close(p1.weights, p2.weights)


def test_noiseless_posterior_samples_satisfy_the_measurement():
    means, covs, weights = _random_mixture(3, 4, seed=13)
    prior = GaussianMixturePrior(means, covs, weights)
    a = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(14))
    x = prior.sample(1, torch.Generator().manual_seed(15))
    y = x @ a.T
    post = prior.posterior(MatrixOperator(a), y, 0.0)
    xs = post.sample(500, torch.Generator().manual_seed(16))
    torch.testing.assert_close(xs @ a.T, y.expand(500, 2), atol=1e-4, rtol=0)
    assert torch.isfinite(post.log_prob(xs)).all()


def test_mixture_validation():
    with pytest.raises(ReddiffError, match="covariances"):
        GaussianMixture(torch.zeros(2, 3), torch.zeros(2, 2, 2), torch.ones(2))
    with pytest.raises(ReddiffError, match="weights"):
        GaussianMixture(torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3), -torch.ones(2))


@pytest.mark.parametrize("m,d", [(2, 5), (5, 5), (7, 3)])
def test_matrix_operator_svd_layout(m, d):
    g = torch.Generator().manual_seed(17)
    mat = torch.randn(m, d, generator=g, dtype=F64)
    op = MatrixOperator(mat)
    assert op.x_shape == (d,) and op.y_shape == (m,) and op.r == min(m, d)
    x = torch.randn(4, d, generator=g, dtype=F64)
    yv = torch.randn(4, m, generator=g, dtype=F64)
    s = op.singulars()
    torch.testing.assert_close(op.A(x), x @ mat.T)
    torch.testing.assert_close(op.U(s * op.Vt(x)[:, : op.r]), op.A(x))
    torch.testing.assert_close(op.V(op.Vt(x)), x)
    torch.testing.assert_close(op.Ut(op.U(yv[:, : op.r])), yv[:, : op.r])
    torch.testing.assert_close((op.A(x) * yv).sum(), (x * op.A_adjoint(yv)).sum())
    torch.testing.assert_close(op.A_dagger(yv), yv @ torch.linalg.pinv(mat).T)
    assert op.A(x.float()).dtype == torch.float32
    with pytest.raises(ReddiffError):
        MatrixOperator(torch.zeros(3))


def test_sliced_wasserstein():
    g = torch.Generator().manual_seed(18)
    a = torch.randn(500, 3, generator=g, dtype=F64)
    assert sliced_wasserstein(a, a) == 0.0
    # in 1-D a shift by c is at distance |c|
    b = torch.randn(400, 1, generator=g, dtype=F64)
    assert sliced_wasserstein(b, b + 2.0) == pytest.approx(2.0)
    # unequal sizes via quantiles: same distribution -> small, shifted -> larger
    c = torch.randn(800, 3, generator=g, dtype=F64)
    assert sliced_wasserstein(a, c) < 0.15
    assert sliced_wasserstein(a, c + 3.0) > 1.0
    # deterministic by default, and controlled by the generator
    assert sliced_wasserstein(a, c) == sliced_wasserstein(a, c)
    assert sliced_wasserstein(a, c, generator=torch.Generator().manual_seed(0)) == sliced_wasserstein(a, c)
