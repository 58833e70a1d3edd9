"""RED-diff (Algorithm 1) against hand-computed updates, and its contracts."""

from __future__ import annotations

import math

import pytest
import torch

from reddiff import DiffusionPrior, Problem, RedDiff, SolverError
from reddiff.operators import LinearOperator
from reddiff.solvers.reddiff import WEIGHTINGS


class MatOp(LinearOperator):
    """y = M x on flattened samples: a small dense linear operator for tests."""

    def __init__(self, m: torch.Tensor, x_shape):
        super().__init__(tuple(x_shape), (m.shape[0],), "matrix")
        self.register_buffer("m", m)

    def A(self, x):
        return x.flatten(1) @ self.m.T

    def A_adjoint(self, y):
        return (y @ self.m).view(-1, *self.x_shape)

    def A_dagger(self, y):
        return (y @ torch.linalg.pinv(self.m).T).view(-1, *self.x_shape)


class AffineNet(torch.nn.Module):
    """eps_theta(x_t, t) = a * x_t + b * t/1000; checks it runs without autograd."""

    def __init__(self, a=0.3, b=0.1):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = b
        self.grad_enabled_calls = 0

    def forward(self, x, t):
        if torch.is_grad_enabled():
            self.grad_enabled_calls += 1
        return self.a * x + self.b * t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype) / 1000


def _problem(batch=2, d=6, m=4, sigma=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(m, d, generator=g, dtype=torch.float64)
    op = MatOp(M, (d,))
    x = torch.randn(batch, d, generator=g, dtype=torch.float64)
    y = op.A(x) + sigma * torch.randn(batch, m, generator=g, dtype=torch.float64)
    return op, x, y


@pytest.mark.parametrize("data_term", ["mean", "paper"])
def test_one_sgd_step_matches_hand_computed_gradient(data_term):
    op, _, y = _problem()
    net = AffineNet()
    prior = DiffusionPrior(net)
    lr, lam, sigma_y = 0.05, 0.7, 0.1
    solver = RedDiff(steps=1, lr=lr, lam=lam, optimizer="sgd", data_term=data_term)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    mu = solver(prior, Problem(y, op, sigma_y), generator=gens)

    # by hand: mu0 = A^+ y; eps per sample from its own generator; t = 999 for a single step
    mu0 = op.A_dagger(y)
    ref_gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    eps = torch.stack([torch.randn(6, generator=g, dtype=torch.float64) for g in ref_gens])
    t = 999
    a = float(prior.schedule.abar[t])
    x_t = math.sqrt(a) * mu0 + math.sqrt(1 - a) * eps
    eps_hat = 0.3 * x_t + 0.1 * t / 1000
    w = lam * math.sqrt(1 - a) / math.sqrt(a)
    resid = y - op.A(mu0)
    if data_term == "mean":
        grad = w * (eps_hat - eps) / 6 - (resid @ op.m) / 4
    else:
        grad = w * (eps_hat - eps) - (resid @ op.m) / sigma_y**2
    assert torch.allclose(mu, mu0 - lr * grad, rtol=1e-12, atol=1e-12)
    assert net.grad_enabled_calls == 0, "the network must run under no_grad"
    assert net.a.grad is None


def test_first_adam_step_has_magnitude_lr():
    op, _, y = _problem()
    prior = DiffusionPrior(AffineNet())
    mu = RedDiff(steps=1, lr=0.01)(prior, Problem(y, op, 0.1), generator=torch.Generator().manual_seed(0))
    # Adam's first step moves every coordinate by lr * g / (|g| + eps) ~ lr
    step = (mu - op.A_dagger(y)).abs()
    assert torch.allclose(step, torch.full_like(step, 0.01), rtol=1e-5)


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_weightings(name):
    r = 3.0
    expected = {"linear": r, "sqrt": math.sqrt(r), "square": r * r, "log": math.log(1 + r),
                "trunc_linear": 1.0, "power2over3": r ** (2 / 3), "const": 1.0}[name]
    abar = 1 / (1 + r * r)  # sqrt(1 - abar) / sqrt(abar) = r
    assert math.isclose(RedDiff(lam=0.5, weighting=name).weight(abar), 0.5 * expected, rel_tol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weighting="cubic"), "RED-diff: weighting must be one of linear, sqrt, .*, got 'cubic'"),
        (dict(steps=0), "steps must be an integer >= 1, got 0"),
        (dict(steps=2.5), "steps must be an integer >= 1, got 2.5"),
        (dict(steps="10"), "steps must be an integer >= 1, got '10'"),
        (dict(lr=0.0), "lr must be a number > 0, got 0.0"),
        (dict(lr=float("nan")), "lr must be"),
        (dict(lam=-1.0), "lam must be a number >= 0"),
        (dict(lam=True), "lam must be"),
        (dict(init="magic"), "init must be one of pinv, classical"),
        (dict(optimizer="nonsense"), "unknown optimizer 'nonsense'; accepted: adam"),
        (dict(optimizer="LBFGS"), "cannot use optimizer 'LBFGS': it needs a closure"),
        (dict(optimizer="sparseadam"), "cannot use optimizer 'sparseadam': it needs sparse gradients"),
        (dict(optimizer="muon"), "cannot use optimizer 'muon'"),
        (dict(order="sideways"), "order must be one of descending, ascending, random"),
        (dict(data_term="sum"), "data_term must be one of mean, paper"),
        (dict(betas=(0.9,)), "betas must be 2 comma-separated numbers"),
        (dict(optimizer_kwargs=[1]), "optimizer_kwargs must be a JSON object"),
        (dict(t_max=-1), "t_max must be a number >= 0 \\(or none\\)"),
    ],
)
def test_bad_settings_are_one_clear_error(kwargs, match):
    with pytest.raises(SolverError, match=match):
        RedDiff(**kwargs)


def test_same_seed_same_result_and_batch_independence():
    op, _, y = _problem(batch=3)
    prior = DiffusionPrior(AffineNet())
    solver = RedDiff(steps=20, lr=0.05)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    full = solver(prior, Problem(y, op, 0.1), generator=gens([1, 2, 3]))
    again = solver(prior, Problem(y, op, 0.1), generator=gens([1, 2, 3]))
    assert torch.equal(full, again)
    alone = solver(prior, Problem(y[1:2], op, 0.1), generator=gens([2]))
    assert torch.allclose(alone, full[1:2], rtol=0, atol=1e-12)
    other = solver(prior, Problem(y, op, 0.1), generator=gens([4, 2, 5]))
    assert torch.allclose(other[1], full[1], atol=1e-12) and not torch.allclose(other[0], full[0])


def test_inits():
    op, _, y = _problem()
    prior = DiffusionPrior(AffineNet())
    seen = {}
    for init in ("pinv", "zeros", "adjoint", "random"):
        def cb(info, init=init):
            seen.setdefault(init, info.x.clone())
        RedDiff(steps=1, lr=1e-9, init=init)(prior, Problem(y, op, 0.1), torch.Generator().manual_seed(0), cb)
    assert torch.allclose(seen["pinv"], op.A_dagger(y), atol=1e-6)
    assert torch.allclose(seen["zeros"], torch.zeros_like(seen["zeros"]), atol=1e-6)
    assert torch.allclose(seen["adjoint"], op.A_adjoint(y), atol=1e-6)
    assert seen["random"].std() > 0.3


@pytest.mark.parametrize(("forward", "expected", "words"), [
    (lambda x: torch.tanh(2 * x), lambda y: y, "the measurement itself"),
    (lambda x: torch.nn.functional.avg_pool2d(x, 2) ** 3,
     lambda y: torch.nn.functional.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False),
     "resized from 4x4"),
    (lambda x: (x**2).mean(dim=(1, 2, 3)).unsqueeze(1), lambda y: torch.zeros(y.shape[0], 3, 8, 8), "zeros"),
], ids=["same shape", "smaller image", "not an image"])
def test_an_operator_without_any_estimate_gets_a_start_chosen_and_named(forward, expected, words):
    """Nonlinear operators with neither A_dagger nor an estimate of their own: RED-diff chooses the start, says which
    at step 0 and only there; init zeros/random still override it."""
    from reddiff.operators.user import CallableOperator

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    op = CallableOperator(forward, (3, 8, 8), tuple(forward(x).shape[1:]), "mine")
    y = op.A(x)
    infos = []
    RedDiff(steps=3, lr=1e-12, init="pinv")(DiffusionPrior(AffineNet()), Problem(y, op, 0.1), None, infos.append)
    assert infos[0].note is not None and words in infos[0].note and "'mine'" in infos[0].note
    assert all(i.note is None for i in infos[1:])
    assert torch.allclose(infos[0].x, expected(y).clamp(-1, 1), atol=1e-6)
    for init in ("zeros", "random"):
        infos = []
        RedDiff(steps=1, init=init)(DiffusionPrior(AffineNet()), Problem(y, op, 0.1), None, infos.append)
        assert infos[0].note is None


def test_callback_reports_every_step_in_descending_order():
    op, _, y = _problem()
    infos = []
    RedDiff(steps=7, lr=0.01)(DiffusionPrior(AffineNet()), Problem(y, op, 0.1), None, infos.append)
    assert [i.step for i in infos] == list(range(7))
    assert [i.t for i in infos] == sorted((i.t for i in infos), reverse=True)
    assert infos[0].t == 999 and infos[-1].t == 0
    assert set(infos[0].losses) >= {"loss", "reg", "obs"}
    assert all(math.isfinite(i.losses["loss"]) for i in infos)


def test_nan_stops_with_step_and_hint():
    class NanNet(torch.nn.Module):
        def forward(self, x, t):
            return x * float("nan") if int(t[0]) < 600 else x

    op, _, y = _problem()
    with pytest.raises(SolverError, match=r"diverged at step 2 \(t=333\).*smaller lr \(now 0.01\)"):
        RedDiff(steps=4, lr=0.01)(DiffusionPrior(NanNet()), Problem(y, op, 0.1))


def test_problem_validates():
    op, _, y = _problem()
    with pytest.raises(SolverError, match="sigma_y"):
        Problem(y, op, -0.1)
    with pytest.raises(SolverError, match="NaN"):
        Problem(y * float("nan"), op, 0.1)
    with pytest.raises(SolverError, match="sigma_y > 0"):
        RedDiff(steps=1, data_term="paper")(DiffusionPrior(AffineNet()), Problem(y, op, 0.0))


def test_does_not_touch_global_rng():
    op, _, y = _problem()
    before = torch.random.get_rng_state()
    RedDiff(steps=3)(DiffusionPrior(AffineNet()), Problem(y, op, 0.1), torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.random.get_rng_state())


def test_converges_to_the_gaussian_posterior_mode_direction():
    """With the exact eps of a standard-normal prior and a denoising problem, RED-diff shrinks y towards 0.

    At timestep t the expected gradient is sqrt(abar (1 - abar)) mu + (mu - y) / sigma^2 (const weighting, paper
    data term), whose zero is y / (1 + sqrt(abar (1 - abar))) for sigma = 1: a shrink factor in [2/3, 1]. A sign
    error in either term would push the ratio outside that interval."""

    class StdNormalEps(torch.nn.Module):
        def forward(self, x, t):
            # x_t ~ N(0, I) for every t, so E[eps | x_t] = sqrt(1 - abar_t) x_t
            return x * torch.sqrt(1 - prior.schedule.abar[t].view(-1, 1)).to(x.dtype)

    prior = DiffusionPrior(StdNormalEps())
    d = 200
    eye = torch.eye(d, dtype=torch.float64)
    op = MatOp(eye, (d,))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, d, generator=g, dtype=torch.float64)
    sigma = 1.0
    y = x + sigma * torch.randn(1, d, generator=g, dtype=torch.float64)
    mu = RedDiff(steps=300, lr=0.05, lam=1.0, weighting="const", data_term="paper")(
        prior, Problem(y, op, sigma), generator=torch.Generator().manual_seed(1))
    ratio = float((mu * y).sum() / (y * y).sum())
    assert 2 / 3 - 0.05 < ratio < 0.97, ratio
    # closer to the truth than the measurement itself
    assert float((mu - x).pow(2).mean()) < float((y - x).pow(2).mean())


def test_t_max_and_lr_schedule():
    op, _, y = _problem()
    prior = DiffusionPrior(AffineNet())
    infos = []
    RedDiff(steps=30, lr=0.01, t_max=10)(prior, Problem(y, op, 0.1), torch.Generator().manual_seed(0), infos.append)
    ts = [i.t for i in infos]
    assert ts[0] == 10 and ts[-1] == 0 and ts == sorted(ts, reverse=True)  # 30 steps over 11 timesteps: repeats
    with pytest.raises(SolverError, match="lr_schedule must be one of constant, linear, cosine"):
        RedDiff(lr_schedule="step")
    # a linear decay: with SGD the second of two steps uses half the learning rate
    lr = 0.05
    gens = lambda: [torch.Generator().manual_seed(3 + i) for i in range(2)]  # noqa: E731
    const = RedDiff(steps=2, lr=lr, optimizer="sgd")
    half = RedDiff(steps=2, lr=lr, optimizer="sgd", lr_schedule="linear")
    steps_c, steps_h = [], []
    const(prior, Problem(y, op, 0.1), gens(), lambda i: steps_c.append(i.x.clone()))
    half(prior, Problem(y, op, 0.1), gens(), lambda i: steps_h.append(i.x.clone()))
    assert torch.equal(steps_c[0], steps_h[0])  # step 0: factor 1, same noise, same estimate
    # step 1: same point, same noise, so the same gradient; SGD then moves half as far (1 - 1/2)
    assert torch.allclose(steps_h[1] - steps_h[0], 0.5 * (steps_c[1] - steps_c[0]), rtol=1e-10, atol=1e-12)


def test_classical_init_and_estimates():
    from reddiff import make_operator
    from reddiff.operators.classical import normalized_convolution_fill

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    sr = make_operator("sr:4", (3, 16, 16)).to(torch.float64)
    est = sr.classical_estimate(sr.A(x))
    assert torch.allclose(sr.A(est), sr.A(x), atol=1e-10)  # back-projected: consistent with the measurement
    inp = make_operator("inpaint-box", (3, 16, 16), generator=g).to(torch.float64)
    filled = inp.classical_estimate(inp.A(x))
    assert torch.allclose(inp.A(filled), inp.A(x)) and torch.isfinite(filled).all()
    const = normalized_convolution_fill(torch.full((1, 1, 8, 8), 0.3), torch.rand(8, 8, generator=g) > 0.9)
    assert torch.allclose(const, torch.full_like(const, 0.3))  # a constant image is filled with its constant
    seen = []
    RedDiff(steps=1, lr=1e-9, init="classical")(DiffusionPrior(AffineNet().float()), Problem(sr.A(x).float(),
                                                sr.float(), 0.0), torch.Generator().manual_seed(0),
                                                lambda i: seen.append(i.x))
    assert torch.allclose(seen[0], est.float(), atol=1e-5)
