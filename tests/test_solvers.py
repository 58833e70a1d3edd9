"""DDIM, DPS, ΠGDM and DDRM against exact Gaussian / Gaussian-mixture references, and their contracts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from reddiff import Problem, RedDiff, SolverError, load_prior, make_operator
from reddiff.operators import LinearOperator, Operator, SVDOperator
from reddiff.operators.matrix import MatrixOperator
from reddiff.solvers import DDIM, DDRM, DPS, SOLVERS, PiGDM
from reddiff.solvers.ddim import ddim_sigma, ddim_step
from reddiff.solvers.pigdm import pigdm_guidance_vector
from reddiff.tools.gmm import GaussianMixturePrior, sliced_wasserstein

F64 = torch.float64
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "adm"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class DenseLinear(LinearOperator):
    """A linear operator on vectors without SVD structure (so ΠGDM takes the conjugate-gradient path)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__((matrix.shape[1],), (matrix.shape[0],), "dense-no-svd")
        self.register_buffer("m", matrix.to(F64))

    def A(self, x):  # noqa: N802
        return x @ self._cast(self.m, x).T

    def A_adjoint(self, y):  # noqa: N802
        return y @ self._cast(self.m, y)


class Squared(Operator):
    """A nonlinear operator: y = x**2."""

    def __init__(self, d: int) -> None:
        super().__init__((d,), (d,), "squared")

    def A(self, x):  # noqa: N802
        return x * x


# -- the shared DDIM arithmetic ------------------------------------------------------------------------------------
def test_ddim_step_with_eta_one_is_the_ddpm_posterior():
    g = gen(0)
    x0, eps, z = (torch.randn(3, 4, generator=g, dtype=F64) for _ in range(3))
    a_t, a_prev = 0.3, 0.5
    x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
    # DDPM (Ho et al. eq. 7) posterior q(x_prev | x_t, x0) for the respaced step beta = 1 - a_t / a_prev
    beta = 1 - a_t / a_prev
    mean = math.sqrt(a_prev) * beta / (1 - a_t) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x_t
    var = (1 - a_prev) / (1 - a_t) * beta
    assert ddim_sigma(a_t, a_prev, 1.0) == pytest.approx(math.sqrt(var))
    torch.testing.assert_close(ddim_step(x0, eps, a_t, a_prev, 1.0, z), mean + math.sqrt(var) * z)
    # eta = 0 is deterministic and the last step (abar_prev = 1) returns x0
    torch.testing.assert_close(ddim_step(x0, eps, a_t, a_prev, 0.0, None),
                               math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps)
    torch.testing.assert_close(ddim_step(x0, eps, a_t, 1.0, 0.85, z), x0)


# -- Gaussian case: closed-form moments ------------------------------------------------------------------------------
def _gaussian_problem(sigma_y: float, n: int):
    d = 4
    g = gen(1)
    mean = torch.randn(1, d, generator=g, dtype=F64)
    # unit covariance: the ΠGDM approximation p(x0 | x_t) = N(x0_hat, (1 - abar_t) I) is then exact
    prior = GaussianMixturePrior(mean, torch.eye(d, dtype=F64)[None], torch.ones(1))
    op = MatrixOperator(torch.randn(2, d, generator=g, dtype=F64))
    x = prior.sample(1, g)
    y = op.A(x) + sigma_y * torch.randn(1, 2, generator=g, dtype=F64)
    post = prior.posterior(op, y, sigma_y)
    return prior, post, Problem(y.expand(n, 2).clone(), op, sigma_y)


def _assert_moments(samples, mean, cov, mean_tol, cov_tol):
    torch.testing.assert_close(samples.mean(0), mean, atol=mean_tol, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), cov, atol=cov_tol, rtol=0)


def _ddim_variance(prior, steps: int, eta: float) -> float:
    """Exact variance of DDIM samples for a unit-covariance Gaussian prior (exact eps), step by step."""
    ts = prior.schedule.timesteps(steps).tolist()
    v = 1.0
    for i, t in enumerate(ts):
        a = float(prior.schedule.abar[t])
        a_prev = float(prior.schedule.abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        sigma = ddim_sigma(a, a_prev, eta)
        # x_prev - mean = (sqrt(a_prev a) + sqrt(1 - a_prev - sigma^2) sqrt(1 - a)) (x_t - mean_t) + sigma z
        c = math.sqrt(a_prev * a) + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * math.sqrt(1 - a)
        v = c * c * v + sigma**2
    return v


def test_ddim_unconditional_matches_the_gaussian_prior():
    prior, _, problem = _gaussian_problem(0.3, 2000)
    out = DDIM(steps=200)(prior, problem, gen(2))
    _assert_moments(out, prior.means[0], prior.covariances[0], 0.08, 0.12)
    # few steps: the discretisation shrinks the variance by exactly the factor the recursion predicts
    for steps, eta in ((20, 0.0), (20, 1.0), (100, 1.0)):
        out = DDIM(steps=steps, eta=eta).sample(prior, (3000, 4), gen(4), dtype=F64)
        v = _ddim_variance(prior, steps, eta)
        assert v < 0.95
        _assert_moments(out, prior.means[0], v * torch.eye(4, dtype=F64), 0.06, 0.08)


@pytest.mark.parametrize("sigma_y", [0.0, 0.3])
def test_pigdm_matches_the_gaussian_posterior(sigma_y):
    prior, post, problem = _gaussian_problem(sigma_y, 2000)
    out = PiGDM(steps=200, eta=0.0)(prior, problem, gen(4))
    _assert_moments(out, post.means[0], post.covariances[0], 0.08, 0.12)
    out = PiGDM(steps=50)(prior, problem, gen(5))  # default eta = 1: more discretisation error
    _assert_moments(out, post.means[0], post.covariances[0], 0.08, 0.2)


def test_ddrm_matches_the_gaussian_posterior():
    # noiseless, eta = 0: observed coordinates are set to ybar exactly and the missing ones follow DDIM: exact
    prior, post, problem = _gaussian_problem(0.0, 2000)
    out = DDRM(steps=200, eta=0.0)(prior, problem, gen(6))
    _assert_moments(out, post.means[0], post.covariances[0], 0.08, 0.12)
    torch.testing.assert_close(problem.operator.A(out), problem.y, atol=1e-9, rtol=0)
    # defaults (eta = 0.85) with noise: the mean is right; DDRM's eta < 1 shrinks the variance (known, by design)
    prior, post, problem = _gaussian_problem(0.3, 2000)
    out = DDRM()(prior, problem, gen(7))
    torch.testing.assert_close(out.mean(0), post.means[0], atol=0.1, rtol=0)


def test_ddrm_two_steps_match_the_paper_equations():
    """Two DDRM steps (t = 999 -> 0 -> x0) by hand, coordinate by coordinate, with the three cases of eq. 7-8."""
    d = 3
    prior = GaussianMixturePrior(torch.full((1, d), 0.5, dtype=F64), torch.eye(d, dtype=F64)[None], torch.ones(1))
    op = MatrixOperator(torch.diag(torch.tensor([2.0, 0.01, 0.0], dtype=F64)))
    sigma_y, eta, eta_b = 0.01, 0.5, 0.7
    y = torch.tensor([[1.0, 0.02, 0.0]], dtype=F64)
    out = DDRM(steps=2, eta=eta, eta_b=eta_b)(prior, Problem(y, op, sigma_y), [gen(8)])

    g = gen(8)
    x = torch.randn(1, d, generator=g, dtype=F64)
    s = [2.0, 0.01, 0.0]
    ybar = [1.0 / 2.0, 0.02 / 0.01, 0.0]  # U = V = I for this diagonal matrix
    abar = prior.schedule.abar
    for t, a_prev in ((999, float(abar[0])), (0, 1.0)):
        a_t = float(abar[t])
        sig_t, sig_s = math.sqrt((1 - a_t) / a_t), math.sqrt((1 - a_prev) / a_prev)
        _, x0 = prior.predict(x, t)
        z = torch.randn(d, generator=g, dtype=F64).tolist()
        xt = (x / math.sqrt(a_t))[0].tolist()
        new = []
        for i in range(d):
            xh = float(x0[0, i])
            if s[i] == 0:
                new.append(xh + math.sqrt(1 - eta**2) * sig_s * (xt[i] - xh) / sig_t + eta * sig_s * z[i])
            elif sig_s < sigma_y / s[i]:
                new.append(xh + math.sqrt(1 - eta**2) * sig_s * (ybar[i] - xh) / (sigma_y / s[i]) + eta * sig_s * z[i])
            else:
                std = math.sqrt(sig_s**2 - eta_b**2 * sigma_y**2 / s[i] ** 2)
                new.append((1 - eta_b) * xh + eta_b * ybar[i] + std * z[i])
        x = math.sqrt(a_prev) * torch.tensor([new], dtype=F64)
    # at t = 0 (sigma = 0.01): coordinate 0 is less noisy (0.005 <= 0.01), coordinate 1 noisy (1 > 0.01)
    torch.testing.assert_close(out, x)


# -- Gaussian mixture: sliced Wasserstein to the exact posterior ---------------------------------------------------
def _mixture_problem(n: int):
    means = torch.tensor([[-2.5, -1.0], [2.5, 1.0]], dtype=F64)
    covs = torch.stack([torch.diag(torch.tensor([0.6, 1.0], dtype=F64)), 0.8 * torch.eye(2, dtype=F64)])
    prior = GaussianMixturePrior(means, covs, torch.tensor([0.5, 0.5]))
    op = MatrixOperator(torch.tensor([[1.0, 0.2]], dtype=F64))
    y = torch.tensor([[0.3]], dtype=F64)
    post = prior.posterior(op, y, 0.5)
    return prior, post, Problem(y.expand(n, 1).clone(), op, 0.5)


def test_clip_x0_follows_the_prior_data_range():
    prior, _, problem = _mixture_problem(200)  # an unbounded prior: clip_x0 leaves the estimates alone
    solver = RedDiff(steps=20, lr=0.5, init="random")
    free = solver(prior, problem, gen(3))
    assert float(free.abs().max()) > 1
    torch.testing.assert_close(RedDiff(steps=20, lr=0.5, init="random", clip_x0=True)(prior, problem, gen(3)), free)
    prior.data_range = (-1.0, 1.0)  # the same prior declared bounded: the estimates are clamped
    clipped = RedDiff(steps=20, lr=0.5, init="random", clip_x0=True)(prior, problem, gen(3))
    torch.testing.assert_close(clipped, free.clamp(-1, 1))


@pytest.mark.parametrize(
    "solver,ratio",
    [(DDRM(), 0.2), (PiGDM(steps=50), 0.2), (DPS(steps=100, zeta=0.3), 0.35)],
    ids=["ddrm", "pigdm", "dps"],
)
def test_samplers_are_far_closer_to_the_posterior_than_the_prior(solver, ratio):
    n = 600
    prior, post, problem = _mixture_problem(n)
    ref = post.sample(n, gen(10))
    prior_sw = sliced_wasserstein(prior.sample(n, gen(11)), ref)
    sw = sliced_wasserstein(solver(prior, problem, gen(12)), ref)
    assert sw < ratio * prior_sw, (sw, prior_sw)


def test_reddiff_estimates_land_in_posterior_modes():
    prior, post, problem = _mixture_problem(50)
    ref_lp = post.log_prob(post.sample(2000, gen(13)))
    est = RedDiff(steps=200, lr=0.1, lam=0.25)(prior, problem, gen(14))
    lp = post.log_prob(est)
    assert float((lp > ref_lp.quantile(0.1)).double().mean()) >= 0.9
    assert float(lp.median()) >= float(ref_lp.median()) - 0.5


# -- contracts ---------------------------------------------------------------------------------------------------------
def test_registry_and_run_records():
    assert set(SOLVERS) == {"reddiff", "dps", "pigdm", "ddrm", "ddim"}
    assert DDRM().to_dict() == {"solver": "ddrm", "steps": 20, "eta": 0.85, "eta_b": 1.0, "rtol": 1e-10,
                                "timestep_spacing": "linspace"}
    assert DPS().to_dict()["zeta"] == 1.0 and DPS().steps == 1000
    assert PiGDM().steps == 100 and DDIM().eta == 0.0
    with pytest.raises(SolverError, match="eta"):
        DDRM(eta=1.5)
    with pytest.raises(SolverError, match="steps"):
        DPS(steps=0)


def test_solvers_reject_operators_they_cannot_use():
    prior = GaussianMixturePrior(torch.zeros(1, 3, dtype=F64), torch.eye(3, dtype=F64)[None], torch.ones(1))
    y = torch.zeros(1, 3, dtype=F64)
    with pytest.raises(SolverError, match=r"DDRM cannot use operator 'dense-no-svd': it needs an SVD-structured"):
        DDRM(steps=2)(prior, Problem(y, DenseLinear(torch.eye(3)), 0.1))
    with pytest.raises(SolverError, match=r"ΠGDM cannot use operator 'squared'.*A_adjoint"):
        PiGDM(steps=2)(prior, Problem(y, Squared(3), 0.1))
    motion = make_operator("deblur-motion", (1, 8, 8), generator=gen(0))
    with pytest.raises(SolverError, match=r"DDRM cannot use operator 'deblur-motion.*singulars"):
        DDRM(steps=2)(prior, Problem(torch.zeros(1, 1, 8, 8), motion, 0.1))
    # DPS needs only A: a nonlinear operator is fine
    out = DPS(steps=3)(prior, Problem(y, Squared(3), 0.1), gen(1))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("sigma_y", [0.0, 0.2])
def test_pigdm_conjugate_gradient_path_matches_the_svd_closed_form(sigma_y):
    g = gen(15)
    mat = torch.randn(3, 5, generator=g, dtype=F64)
    y, x0 = torch.randn(2, 3, generator=g, dtype=F64), torch.randn(2, 5, generator=g, dtype=F64)
    for r2 in (0.9, 0.01):
        svd = pigdm_guidance_vector(MatrixOperator(mat), y, x0, r2, sigma_y)
        cg = pigdm_guidance_vector(DenseLinear(mat), y, x0, r2, sigma_y, cg_iters=200, cg_tol=1e-12)
        dense = mat.T @ torch.linalg.pinv(r2 * mat @ mat.T + sigma_y**2 * torch.eye(3, dtype=F64)) @ (y - x0 @ mat.T).T
        torch.testing.assert_close(svd, dense.T)
        torch.testing.assert_close(cg, dense.T, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("make", [lambda: DDIM(steps=10, eta=1.0), lambda: DDRM(steps=10),
                                  lambda: PiGDM(steps=10), lambda: DPS(steps=10)], ids=["ddim", "ddrm", "pigdm", "dps"])
def test_determinism_and_batch_independence(make):
    prior, _, problem = _mixture_problem(3)
    solver = make()
    a = solver(prior, problem, gen(20))
    b = solver(prior, problem, gen(20))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(solver(prior, problem, 20), a, rtol=0, atol=0)  # an integer seeds a CPU generator
    with pytest.raises(SolverError, match="generator must be None, an integer seed"):
        solver(prior, problem, 2.5)
    gens = [gen(30 + i) for i in range(3)]
    full = solver(prior, problem, gens)
    alone = solver(prior, Problem(problem.y[1:2], problem.operator, problem.sigma_y), [gen(31)])
    torch.testing.assert_close(full[1:2], alone, rtol=1e-10, atol=1e-12)
    steps = []
    solver(prior, problem, gen(20), callback=steps.append)
    assert [s.step for s in steps] == list(range(solver.steps)) and steps[-1].t == 0


# -- a small image with the tiny ADM fixture network ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_adm():
    config = torch.load(FIXTURES / "tiny_a_io.pt", weights_only=True)["config"]
    return load_prior(FIXTURES / "tiny_a.pt", config=config, progress=False)


@pytest.mark.parametrize("task", ["sr:2", "inpaint-center"])
def test_solvers_run_on_images(tiny_adm, task):
    op = make_operator(task, (3, 32, 32))
    x = torch.rand(1, 3, 32, 32, generator=gen(40)) * 2 - 1
    problem = Problem(op.A(x) + 0.05 * torch.randn(op.A(x).shape, generator=gen(41)), op, 0.05)
    for solver in (DDIM(steps=2), DDRM(steps=2), PiGDM(steps=2), DPS(steps=2)):
        out = solver(tiny_adm, problem, gen(42))
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all(), solver.name
    assert all(p.grad is None for p in tiny_adm.network.parameters())


def test_dps_uses_the_gradient_through_the_network(tiny_adm):
    op = make_operator("sr:2", (3, 32, 32))
    x = torch.rand(1, 3, 32, 32, generator=gen(43)) * 2 - 1
    problem = Problem(op.A(x), op, 0.0)
    with_grad = DPS(steps=2, zeta=1.0)(tiny_adm, problem, gen(44))
    without = DPS(steps=2, zeta=0.0)(tiny_adm, problem, gen(44))
    assert float((with_grad - without).abs().max()) > 1e-3
    assert all(p.grad is None for p in tiny_adm.network.parameters())


# -- a learned prior: the bundled one, on a crop of a training image ------------------------------------------------
@pytest.mark.parametrize("task, sigma_y", [("sr:4", 0.02), ("inpaint-random:0.8", 0.0)])
def test_pigdm_stays_stable_on_the_bundled_prior_and_matches_ddrm(task, sigma_y):
    """50 ΠGDM steps with a small learned prior: finite, consistent with y, and as good as DDRM on the same problem.

    Without clipping its Tweedie estimate to [-1, 1], ΠGDM diverges here within ten steps (t ~ 880-900).
    """
    from sklearn.datasets import load_sample_images

    prior = load_prior("bundled", progress=False)
    image = load_sample_images().images[0][120:152, 220:252]  # `china`, a training image
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    op = make_operator(task, (3, 32, 32), generator=gen(0))
    y = op.A(x) + sigma_y * torch.randn(op.A(x).shape, generator=gen(1))
    problem = Problem(y, op, sigma_y)

    def psnr(est):
        return 10 * math.log10(4 / float((est.clamp(-1, 1) - x).pow(2).mean()))

    estimates = []
    out = PiGDM(steps=50)(prior, problem, gen(2), callback=lambda info: estimates.append(info.x))
    assert torch.isfinite(out).all()
    assert all(float(e.abs().max()) <= 1 for e in estimates)  # x0_hat clipped to the prior's data range
    assert float((op.A(out) - y).pow(2).mean().sqrt()) < max(2 * sigma_y, 0.06)
    reference = DDRM(steps=50)(prior, problem, gen(2))
    assert psnr(out) > psnr(reference) - 1.5
    assert psnr(out) > psnr(op.A_adjoint(y)) + 4


TASKS_32 = ["denoise", "inpaint-box", "inpaint-center", "inpaint-half", "inpaint-random:0.8", "inpaint-freeform",
            "sr:4", "bicubic:2", "deblur-gauss", "deblur-uniform:5", "deblur-motion:0.5", "colorize",
            "phase-retrieval", "hdr", "jpeg:50", "quantize:4", "cs:0.25", "sr:2+inpaint-random:0.5"]


@pytest.mark.parametrize("task", TASKS_32)
def test_every_solver_runs_on_every_task_it_can_handle(tiny_adm, task):
    """A solver either runs (finite, right shape) or refuses in one line; ΠGDM runs wherever A has an adjoint,
    DDRM wherever it has an SVD."""
    op = make_operator(task, (3, 32, 32), generator=gen(7))
    x = torch.rand(1, 3, 32, 32, generator=gen(8)) * 2 - 1
    clean = op.A(x)
    problem = Problem(clean + 0.02 * torch.randn(clean.shape, generator=gen(9)), op, 0.02)
    expect = {"ddim": True, "dps": True, "pigdm": isinstance(op, LinearOperator), "ddrm": isinstance(op, SVDOperator)}
    for name, solver in (("ddim", DDIM(steps=2)), ("dps", DPS(steps=2)), ("pigdm", PiGDM(steps=2)),
                         ("ddrm", DDRM(steps=2))):
        if expect[name]:
            out = solver(tiny_adm, problem, gen(10))
            assert out.shape == x.shape and torch.isfinite(out).all(), (task, name)
        else:
            with pytest.raises(SolverError, match="cannot use operator") as err:
                solver(tiny_adm, problem, gen(10))
            assert "\n" not in str(err.value)
