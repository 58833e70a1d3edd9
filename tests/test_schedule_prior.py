from __future__ import annotations

import math

import pytest
import torch

from reddiff import DiffusionPrior, ReddiffError, VPSchedule
from reddiff.runtime import count_evals


def test_linear_schedule_matches_closed_form():
    s = VPSchedule()
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    abar = 1.0
    ref = []
    for b in betas:
        abar *= 1 - b
        ref.append(abar)
    assert s.betas.dtype == torch.float64
    assert torch.allclose(s.betas, torch.tensor(betas, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.allclose(s.abar, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=0)
    assert math.isclose(float(s.abar[0]), 1 - 1e-4, rel_tol=1e-14)


def test_cosine_schedule_is_monotone_and_clipped():
    s = VPSchedule("cosine")
    assert (s.abar[1:] < s.abar[:-1]).all()
    assert float(s.betas.max()) <= 0.999
    assert abs(float(s.abar[0]) - (math.cos((1 / 1000 + 0.008) / 1.008 * math.pi / 2) / math.cos(
        0.008 / 1.008 * math.pi / 2)) ** 2) < 1e-12


@pytest.mark.parametrize("n", [1, 2, 10, 100, 1000])
def test_timesteps_descending_evenly_spaced(n):
    ts = VPSchedule().timesteps(n)
    assert ts.dtype == torch.int64 and len(ts) == n
    assert int(ts[0]) == 999
    if n > 1:
        assert int(ts[-1]) == 0
        assert (ts[:-1] > ts[1:]).all()
        gaps = (ts[:-1] - ts[1:]).double()
        assert float(gaps.max() - gaps.min()) <= 1
    assert torch.equal(VPSchedule().timesteps(n, "ascending"), ts.flip(0))


def test_random_order_is_a_permutation_from_the_generator():
    s = VPSchedule()
    a = s.timesteps(50, "random", torch.Generator().manual_seed(1))
    b = s.timesteps(50, "random", torch.Generator().manual_seed(1))
    c = s.timesteps(50, "random", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort(descending=True).values, s.timesteps(50))


@pytest.mark.parametrize("bad", [dict(num_steps=0), dict(num_steps=1001), dict(num_steps=5, order="sideways")])
def test_timesteps_bad_input(bad):
    with pytest.raises(ReddiffError):
        VPSchedule().timesteps(**bad)


def test_unknown_schedule_kind():
    with pytest.raises(ReddiffError, match="linear, cosine"):
        VPSchedule("quadratic")


class ScaleNet(torch.nn.Module):
    """eps = c * x_t (learned-sigma variant appends junk channels); records input sizes."""

    def __init__(self, c=0.5, learned_sigma=False, multiple=1):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c))
        self.learned_sigma = learned_sigma
        self.size_multiple = multiple
        self.seen = []

    def forward(self, x, t):
        self.seen.append(tuple(x.shape))
        if self.size_multiple > 1:
            assert x.shape[-1] % self.size_multiple == 0 and x.shape[-2] % self.size_multiple == 0
        out = self.c * x
        return torch.cat([out, 100 + x], 1) if self.learned_sigma else out


def test_predict_tweedie_and_learned_sigma():
    x_t = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([10, 700])
    for ls in (False, True):
        prior = DiffusionPrior(ScaleNet(learned_sigma=ls).double(), learned_sigma=ls)
        with count_evals(prior) as evals:
            eps, x0 = prior.predict(x_t, t)
        assert torch.allclose(eps, 0.5 * x_t)
        abar = VPSchedule().abar[t].view(2, 1, 1, 1)
        assert torch.allclose(x0, (x_t - (1 - abar).sqrt() * eps) / abar.sqrt(), atol=1e-12)
        assert evals.count == 1 and isinstance(prior.network, ScaleNet)  # the counter unwraps afterwards


def test_data_range_defaults_to_images_and_is_checked():
    assert DiffusionPrior(ScaleNet()).data_range == (-1.0, 1.0)
    assert DiffusionPrior(ScaleNet(), data_range=None).data_range is None
    assert DiffusionPrior(ScaleNet(), data_range=(0, 255)).data_range == (0.0, 255.0)
    for bad in [(1.0, -1.0), (0.0, float("nan")), (2.0, 2.0)]:
        with pytest.raises(ReddiffError, match="data_range must be two finite numbers"):
            DiffusionPrior(ScaleNet(), data_range=bad)


def test_learned_sigma_misconfigured_is_an_error():
    prior = DiffusionPrior(ScaleNet(learned_sigma=True))
    with pytest.raises(ReddiffError, match="learned_sigma"):
        prior.eps(torch.randn(1, 3, 8, 8), 5)


def test_padding_to_network_multiple_and_crop_back():
    net = ScaleNet(multiple=8)
    prior = DiffusionPrior(net)
    x = torch.randn(1, 3, 13, 21)
    eps = prior.eps(x, 3)
    assert eps.shape == x.shape and net.seen[-1] == (1, 3, 16, 24)
    assert torch.allclose(eps, 0.5 * x)
    tiny = torch.randn(1, 3, 3, 5)  # too small to reflect-pad to 8: replicate
    assert prior.eps(tiny, 3).shape == tiny.shape


def test_vectors_pass_through_and_scalar_t_broadcasts():
    prior = DiffusionPrior(ScaleNet())
    x = torch.randn(4, 7)
    eps, x0 = prior.predict(x, 500)
    assert eps.shape == x.shape and x0.shape == x.shape
    with pytest.raises(ReddiffError):
        prior.eps(x, torch.tensor([1, 2]))


def test_noise_forward_process():
    prior = DiffusionPrior(ScaleNet())
    x0, eps = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    a = float(VPSchedule().abar[321])
    assert torch.allclose(prior.noise(x0, 321, eps), math.sqrt(a) * x0 + math.sqrt(1 - a) * eps)
