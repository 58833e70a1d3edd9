"""RED-diff's ``reference`` profile against a float64 transcription of the published algorithm with the official
code's conventions (its timestep grid, its return value, its inpainting data term), and the ``stride`` grid."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reddiff import Problem, RedDiff, SolverError, load_prior, make_operator
from reddiff.cli import main
from reddiff.schedule import VPSchedule
from reddiff.solvers.reddiff import PROFILES


def test_stride_grid_is_range_0_T_step_T_over_N():
    vp = VPSchedule()
    got = vp.timesteps(300, spacing="stride").tolist()
    assert got == list(range(0, 1000, 1000 // 300))[::-1] and len(got) == 334  # more steps than asked for
    for n in (50, 100, 1000):  # where k divides T, the same grid as diffusers' leading spacing
        assert torch.equal(vp.timesteps(n, spacing="stride"), vp.timesteps(n, spacing="leading"))
    assert vp.timesteps(5000, spacing="stride", allow_repeats=True).tolist() == list(range(999, -1, -1))


def test_profiles_by_name():
    assert RedDiff.profile("paper") == RedDiff()
    ref = RedDiff.profile("Reference", steps=30)
    assert (ref.timestep_spacing, ref.returns, ref.data_term, ref.steps) == ("stride", "last_x0", "reference", 30)
    assert set(PROFILES["reference"]) <= {f.name for f in RedDiff.hyperparams()}
    with pytest.raises(SolverError, match="accepted: paper, reference"):
        RedDiff.profile("official")


def _official(net, abar, op, y, x_shape, steps, lam, lr, gen):
    """The published algorithm for one image, with the official code's conventions: ``range(0, T, T // N)``
    reversed, start at the pseudo-inverse, Adam (0.9, 0.99), ``loss = lam * sqrt(1 - abar) / sqrt(abar) *
    mean(sg(eps_hat - eps) * x0) + mean(e_obs^2) / 2`` where an inpainting residual is the whole masked image, and
    the x0 of the last step (taken before its update) returned. Returns that and mu after every step."""
    mu = op.inverse_estimate(y).clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    trajectory, out = [], None
    for t in reversed(range(0, len(abar), len(abar) // steps)):
        a = float(abar[t])
        noise = torch.randn(x_shape, generator=gen, dtype=torch.float64)[None]
        x0 = mu
        xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
        with torch.no_grad():
            et = net(xt, torch.full((1,), t, dtype=torch.int64))[:, : x_shape[0]]  # ε (learned variances follow)
        if getattr(op, "mask", None) is not None:  # Inpainting2: y as an image with zeros where unobserved
            keep = op.mask.to(torch.float64)
            y_img = torch.zeros((1, *x_shape), dtype=torch.float64)
            y_img[:, :, op.mask] = y.view(1, x_shape[0], -1)
            e_obs = y_img - keep * x0
        else:
            e_obs = y - op.A(x0)
        loss_obs = (e_obs**2).mean() / 2
        loss_noise = torch.mul((et - noise).detach(), x0).mean()
        loss = lam * math.sqrt(1 - a) / math.sqrt(a) * loss_noise + loss_obs
        opt.zero_grad()
        loss.backward()
        out = x0.detach().clone()
        opt.step()
        trajectory.append(mu.detach().clone())
    return out, trajectory


@pytest.mark.parametrize("task", ["inpaint-random:0.7", "sr:2"])
def test_reference_profile_is_the_official_algorithm(adm_fixtures, task):
    config = torch.load(adm_fixtures / "tiny_a_io.pt", weights_only=True)["config"]
    prior = load_prior(adm_fixtures / "tiny_a.pt", config=config, progress=False)
    prior.network.double()
    x_shape = (3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    op = make_operator(task, x_shape, generator=gen).to(torch.float64)
    x = torch.rand((2, *x_shape), generator=gen, dtype=torch.float64) * 2 - 1
    y = op.A(x) + 0.05 * torch.randn(op.A(x).shape, generator=gen, dtype=torch.float64)
    steps, lam, lr = 30, 0.25, 0.1  # 30 asked, the grid holds 31
    solver = RedDiff.profile("reference", steps=steps, lam=lam, lr=lr)
    seen = []
    ours = solver(prior, Problem(y, op, 0.05), generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                  callback=lambda info: seen.append(info.x.clone()))
    assert len(seen) == 31
    # per sample: each image of the batch equals the official algorithm run on that image alone
    for b, seed in enumerate((5, 6)):
        out, trajectory = _official(prior.network, prior.schedule.abar, op, y[b : b + 1], x_shape, steps, lam, lr,
                                    torch.Generator().manual_seed(seed))
        for mine, theirs in zip(seen, trajectory, strict=True):
            assert torch.allclose(mine[b : b + 1], theirs, rtol=0, atol=1e-13)
        assert torch.allclose(ours[b : b + 1], out, rtol=0, atol=1e-13)
    # what the conventions change: Algorithm 1 as written returns mu after the last update, over linspace steps
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    plain = RedDiff(steps=steps, lam=lam, lr=lr)(prior, Problem(y, op, 0.05), generator=gens)
    assert (plain - ours).abs().max() > 1e-3


def test_profile_from_the_cli(capsys, tmp_path, small_image, adm_fixtures):
    base = ["solve", "--input", str(small_image), "--task", "inpaint-random:0.5", "--steps", "4", "--prior",
            str(adm_fixtures / "tiny_a.pt"), "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "r"), "--profile", "reference", "--lr", "0.5"]) == 0
    rec = json.loads((tmp_path / "r/coffee/run.json").read_text())
    s = rec["solver"]
    assert (s["timestep_spacing"], s["returns"], s["data_term"], s["lr"], s["lam"]) == (
        "stride", "last_x0", "reference", 0.5, 0.25)
    assert main([*base, "--output", str(tmp_path / "d")]) == 0
    s = json.loads((tmp_path / "d/coffee/run.json").read_text())["solver"]
    assert (s["timestep_spacing"], s["returns"], s["data_term"]) == ("linspace", "mu", "mean")
    assert main([*base, "--output", str(tmp_path / "x"), "--profile", "official"]) == 2
    assert "reference" in capsys.readouterr().err
