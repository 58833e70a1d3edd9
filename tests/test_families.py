"""One noise language: every schedule family and prediction type gives the same results for the same prior.

The exact Gaussian-mixture prior is exposed in every prediction type (epsilon, sample, v, EDM denoiser, flow
velocity) and on schedules of every family that visit the same noise levels; RED-diff and every sampler must then
give the same estimates and samples (same noise) to 1e-6 in float64. On the families' own continuous schedules the
samplers must land as close to the exact posterior as on the VP schedule.
"""

from __future__ import annotations

import math

import pytest
import torch

from reddiff import DDIM, DDRM, DPS, PiGDM, Problem, RedDiff
from reddiff.errors import ReddiffError
from reddiff.operators.matrix import MatrixOperator
from reddiff.prediction import PREDICTIONS, from_eps_x0, to_eps_x0
from reddiff.schedule import (
    EDMSchedule,
    FlowSchedule,
    TabulatedSchedule,
    VPContinuousSchedule,
    VPSchedule,
    schedule_from_dict,
)
from reddiff.tools.gmm import GaussianMixturePrior, sliced_wasserstein

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixture(seed: int = 0, d: int = 4, k: int = 3):
    g = gen(seed)
    means = 3 * torch.randn(k, d, generator=g, dtype=F64)
    a = torch.randn(k, d, d, generator=g, dtype=F64)
    covs = a @ a.transpose(-1, -2) / d + 0.2 * torch.eye(d, dtype=F64)
    return means, covs, torch.tensor([0.5, 0.3, 0.2], dtype=F64)


def same_levels(vp: VPSchedule, family: str) -> TabulatedSchedule:
    """A schedule of another family visiting exactly the VP schedule's noise-to-signal ratios r = sigma / alpha."""
    r = vp.sigmas
    if family == "ve":
        return TabulatedSchedule(torch.ones_like(r), r, "ve")
    if family == "flow":
        t = r / (1 + r)
        return TabulatedSchedule(1 - t, t, "flow")
    if family == "scaled":  # an arbitrary (alpha, sigma) with the same ratio: not variance preserving
        c = 0.5 + torch.linspace(0, 2, r.numel(), dtype=F64)
        return TabulatedSchedule(c, c * r, "scaled")
    raise ValueError(family)


def variants():
    vp = VPSchedule()
    yield "vp/epsilon", vp, "epsilon"
    for kind in PREDICTIONS[1:]:
        yield f"vp/{kind}", vp, kind
    for family in ("ve", "flow", "scaled"):
        for kind in PREDICTIONS:
            yield f"{family}/{kind}", same_levels(vp, family), kind


def problem(prior, n: int = 4, sigma_y: float = 0.3):
    g = gen(5)
    op = MatrixOperator(torch.randn(2, prior.mixture.dim, generator=g, dtype=F64))
    x = prior.sample(1, g)
    y = op.A(x) + sigma_y * torch.randn(1, 2, generator=g, dtype=F64)
    return Problem(y.expand(n, 2).clone(), op, sigma_y)


def test_conversions_are_inverse_of_each_other():
    g = gen(1)
    eps, x0 = torch.randn(2, 3, 5, generator=g, dtype=F64), torch.randn(2, 3, 5, generator=g, dtype=F64)
    alpha, sigma = torch.tensor([[[0.3]], [[0.9]]], dtype=F64), torch.tensor([[[1.7]], [[0.2]]], dtype=F64)
    x_t = alpha * x0 + sigma * eps
    for kind in PREDICTIONS:
        out = from_eps_x0(kind, eps, x0, alpha, sigma)
        e, z = to_eps_x0(kind, out, x_t, alpha, sigma)
        torch.testing.assert_close(e, eps, rtol=0, atol=1e-12, msg=kind)
        torch.testing.assert_close(z, x0, rtol=0, atol=1e-12, msg=kind)


SOLVERS = {
    "reddiff": lambda: RedDiff(steps=20, lr=0.5, lam=1.0, weighting="sqrt", init="random", data_term="paper"),
    "ddim": lambda: DDIM(steps=20, eta=0.7),
    "dps": lambda: DPS(steps=20, zeta=0.3),
    "pigdm": lambda: PiGDM(steps=20),
    "ddrm": lambda: DDRM(steps=20),
}


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_every_parameterisation_gives_the_same_results(solver):
    means, covs, weights = mixture()
    reference = GaussianMixturePrior(means, covs, weights)
    prob = problem(reference)
    expected = SOLVERS[solver]()(reference, prob, [gen(10 + i) for i in range(prob.batch_size)])
    assert torch.isfinite(expected).all()
    for name, schedule, kind in variants():
        prior = GaussianMixturePrior(means, covs, weights, schedule=schedule, prediction=kind)
        got = SOLVERS[solver]()(prior, prob, [gen(10 + i) for i in range(prob.batch_size)])
        err = float((got - expected).abs().max())
        assert err <= 1e-6 * max(1.0, float(expected.abs().max())), (solver, name, err)


@pytest.mark.parametrize("schedule", [EDMSchedule(), FlowSchedule(), VPContinuousSchedule(), VPSchedule("cosine"),
                                      VPSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012)],
                         ids=["edm", "flow", "vp-sde", "vp-cosine", "vp-scaled-linear"])
def test_every_family_lands_as_close_to_the_exact_posterior_as_vp(schedule):
    """DDRM and ΠGDM samples (400 of them, 50 steps) against exact posterior samples, sliced Wasserstein."""
    means, covs, weights = mixture(3)
    vp = GaussianMixturePrior(means, covs, weights)
    other = GaussianMixturePrior(means, covs, weights, schedule=schedule, prediction="sample")
    prob = problem(vp, n=400, sigma_y=0.2)
    post = vp.posterior(prob.operator, prob.y[:1], prob.sigma_y)
    exact = post.sample(400, gen(7))
    prior_sw = sliced_wasserstein(vp.sample(400, gen(8)), exact)
    for make in (lambda: DDRM(steps=50), lambda: PiGDM(steps=50)):
        on_vp = sliced_wasserstein(make()(vp, prob, gen(9)), exact)
        on_other = sliced_wasserstein(make()(other, prob, gen(9)), exact)
        assert on_other < 0.5 * prior_sw and on_other < on_vp + 0.25 * prior_sw, (schedule.family, on_vp, on_other)


def test_continuous_schedules_and_their_records():
    edm = EDMSchedule()
    ts = edm.timesteps(5)
    assert ts[0] == pytest.approx(80.0) and ts[-1] == pytest.approx(0.002) and bool((ts[:-1] > ts[1:]).all())
    assert edm.abar_of(80.0) == pytest.approx(1 / (1 + 80**2))
    flow = FlowSchedule()
    a, s = flow.alpha_sigma(torch.tensor(0.25, dtype=F64))
    assert float(a) == 0.75 and float(s) == 0.25 and flow.scale_of(0.25) == pytest.approx(math.hypot(0.75, 0.25))
    sde = VPContinuousSchedule()
    a, s = sde.alpha_sigma(torch.tensor([0.3, 0.9], dtype=F64))
    torch.testing.assert_close(a * a + s * s, torch.ones(2, dtype=F64))
    for sch in (edm, flow, sde, VPSchedule("cosine"), same_levels(VPSchedule(), "ve")):
        again = schedule_from_dict(sch.to_dict())
        assert type(again) is type(sch) and again.to_dict() == sch.to_dict()


def test_timestep_spacings_match_diffusers_conventions():
    vp = VPSchedule()
    assert vp.timesteps(10, spacing="leading").tolist() == list(range(900, -1, -100))
    assert vp.timesteps(10, spacing="trailing").tolist() == list(range(999, 0, -100))
    assert vp.timesteps(10).tolist()[0] == 999 and vp.timesteps(10).tolist()[-1] == 0
    assert vp.timesteps(3, spacing="leading").tolist() == [666, 333, 0]


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_more_steps_than_timesteps_repeat_each_timestep_evenly(spacing):
    """RED-diff may take more steps than there are timesteps below t_max: every timestep in 0 .. t_max is visited,
    in order, once or a few times, never below 0 or bunched at t_max."""
    ts = VPSchedule().timesteps(100, t_max=10, allow_repeats=True, spacing=spacing)
    assert ts.min() == 0 and ts.max() == 10 and (ts[:-1] >= ts[1:]).all()
    counts = torch.bincount(ts, minlength=11)
    assert (counts >= 1).all() and counts.max() <= 2 * counts.float().mean() + 1, counts.tolist()


@pytest.mark.parametrize(("make", "needle"), [
    (lambda: FlowSchedule(t_max=1.0), "t_max < 1"),
    (lambda: EDMSchedule(sigma_min=0.0), "0 < sigma_min"),
    (lambda: VPContinuousSchedule(t_min=0.9, t_max=0.1), "0 < t_min < t_max"),
    (lambda: EDMSchedule(rho=0.0), "rho must be > 0"),
    (lambda: VPContinuousSchedule(beta_min=-1.0), "beta_min"),
    (lambda: schedule_from_dict({"family": "vp", "num_timesteps": "abc"}), "bad vp schedule"),
    (lambda: schedule_from_dict({"family": "flow", "kind": "tabulated"}), "bad flow schedule"),
], ids=["flow t=1", "edm sigma 0", "reversed", "rho", "negative beta", "vp text", "table without alpha"])
def test_schedules_that_leave_no_signal_or_no_noise_are_refused(make, needle):
    with pytest.raises(ReddiffError, match=needle) as err:
        make()
    assert "\n" not in str(err.value)


def test_a_noise_level_carries_over_between_schedules():
    vp = VPSchedule()
    for t in (0, 50, 400, 999):
        assert vp.time_at_abar(vp.abar_of(t)) == t
        for other in (FlowSchedule(t_min=1e-4, t_max=0.9999), EDMSchedule(sigma_min=1e-3, sigma_max=200.0),
                      VPContinuousSchedule(t_min=1e-5)):
            target = vp.abar_of(t)
            if other.abar_of(other.t_max) <= target <= other.abar_of(other.t_min):  # within its range
                assert other.abar_of(other.time_at_abar(target)) == pytest.approx(target, rel=1e-9)
    assert FlowSchedule().time_at_abar(0.0) == FlowSchedule().t_max  # beyond the schedule's range: its end
