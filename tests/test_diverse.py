"""Several samples of one measurement: RED-diff's repulsion (exact drift, where it acts, mode coverage on a Gaussian
mixture), ``num_samples`` through the experiment module and the CLI; and the checks that say when a sampler's
result does not restore the measurement (too few steps, a misfit estimate)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from reddiff.cli import main
from reddiff.experiment import Job, Seeds, measurement_fit, restore, solve_jobs
from reddiff.noise import GaussianNoise
from reddiff.operators import make_operator
from reddiff.solvers import DPS, PiGDM, RedDiff
from reddiff.solvers.base import Solver
from reddiff.solvers.reddiff import repulsion_drift, unpinned
from reddiff.tools.gmm import modes_covered, ring_problem

F64 = torch.float64


def _energy(x: torch.Tensor, groups: list[int], h: torch.Tensor) -> torch.Tensor:
    """sum_i mean_{j != i} exp(-d_ij / h) over each group, written directly (h held fixed, as in the drift)."""
    total = x.new_zeros(())
    for g in set(groups):
        idx = [i for i, gi in enumerate(groups) if gi == g]
        for i in idx:
            others = [j for j in idx if j != i]
            for j in others:
                total = total + torch.exp(-(x[i] - x[j]).pow(2).mean() / h) / len(others)
    return total


def test_repulsion_drift_is_minus_the_scaled_energy_gradient_per_group():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, generator=g, dtype=F64)
    groups = [0, 0, 0, 1, 1]
    drift = repulsion_drift(x, groups)
    n_entries = 12
    for members in ([0, 1, 2], [3, 4]):
        pts = x[members].flatten(1)
        d = (pts[:, None] - pts[None]).pow(2).mean(-1)
        off = ~torch.eye(len(members), dtype=torch.bool)
        h = d[off].median() / math.log(len(members))
        xi = x[members].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_energy(xi, [0] * len(members), h), xi)
        # each pair appears in both members' sums: the drift is the gradient of one member's own terms
        torch.testing.assert_close(drift[members], -n_entries * grad / 2, rtol=1e-10, atol=1e-12)
    # groups do not interact; a sample alone gets nothing
    moved = x.clone()
    moved[3:] += 5.0
    torch.testing.assert_close(repulsion_drift(moved, groups)[:3], drift[:3])
    assert torch.equal(repulsion_drift(x, [0, 1, 2, 3, 4]), torch.zeros_like(x))
    # two samples are pushed straight apart
    two = repulsion_drift(x[:2], [0, 0])
    assert float(((x[0] - x[1]) * two[0]).sum()) > 0 and torch.allclose(two[0], -two[1])
    # the least bandwidth bounds the push between samples that are nearly equal
    near = torch.stack([torch.zeros(8, dtype=F64), 1e-6 * torch.ones(8, dtype=F64)])
    assert float(repulsion_drift(near, [0, 0], min_bandwidth=0.01).abs().max()) < 1e-3
    assert float(repulsion_drift(near, [0, 0]).abs().max()) > 1e3


def test_repulsion_acts_only_where_the_data_leaves_the_image_free():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    inpaint = make_operator("inpaint-random:0.5", (3, 8, 8), torch.Generator().manual_seed(2)).double()
    free = unpinned(inpaint, x)
    observed = inpaint.mask.bool().expand_as(x[0])
    assert float(free[:, observed].abs().max()) == 0.0
    torch.testing.assert_close(free[:, ~observed], x[:, ~observed])
    sr = make_operator("sr:2", (3, 8, 8)).double()
    assert float(sr.A(unpinned(sr, x)).abs().max()) < 1e-12  # block means removed
    jpeg = make_operator("jpeg:50", (3, 8, 8))
    assert torch.equal(unpinned(jpeg, x.float()), x.float())  # nonlinear: the whole image


def _modes_covered(repulsion: float, trial: int, n: int = 8) -> tuple[int, float]:
    prior, problem, post = ring_problem(trial, n)
    gens = [torch.Generator().manual_seed(1000 * trial + i) for i in range(n)]
    return modes_covered(post, RedDiff(steps=100, lr=0.1, lam=0.25, repulsion=repulsion)(prior, problem, gens))


def test_repulsion_covers_more_posterior_modes_and_stays_inside_them():
    """8 samples of a posterior with 8 equal modes: independent RED-diff samples fall into modes at random (about
    5 distinct); repelled ones cover more, and each still lies inside a mode (benchmarks/diversity.py, 20 trials:
    5.00 vs 6.50 modes at repulsion 1, 97.5 % vs 100 % inside)."""
    alone = [_modes_covered(0.0, t) for t in range(10)]
    repelled = [_modes_covered(1.0, t) for t in range(10)]
    mean_alone = sum(c for c, _ in alone) / 10
    mean_repelled = sum(c for c, _ in repelled) / 10
    assert mean_repelled >= mean_alone + 1.0, (mean_alone, mean_repelled)
    assert min(f for _, f in repelled) >= 0.875


def test_samples_without_repulsion_are_the_single_runs(tiny_prior):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    single = restore(tiny_prior, x, "inpaint-box", 0.0, seed=5, steps=4, lr=0.05)
    many = restore(tiny_prior, x, "inpaint-box", 0.0, seed=5, num_samples=3, steps=4, lr=0.05)
    torch.testing.assert_close(many.samples[0:1], single.estimate, rtol=0, atol=1e-6)
    assert many.samples.shape == (3, 3, 16, 16) and len(many.sample_psnrs) == 3
    torch.testing.assert_close(many.spread, many.samples.std(0, unbiased=False).mean(0)[None, None])
    torch.testing.assert_close(many.estimate, many.samples.mean(0, keepdim=True).clamp(-1, 1), rtol=0, atol=1e-6)
    pushed = restore(tiny_prior, x, "inpaint-box", 0.0, seed=5, num_samples=3, steps=4, lr=0.05, repulsion=1.0)
    assert float(pushed.spread.mean()) > 2 * float(many.spread.mean())
    with pytest.raises(Exception, match="num_samples"):
        restore(tiny_prior, x, "inpaint-box", 0.0, num_samples=0, steps=2)


def test_cli_writes_every_sample_and_the_spread_map(capsys, tmp_path, small_image, adm_fixtures):
    out = tmp_path / "s"
    code = main(["solve", "--input", str(small_image), "--task", "inpaint-box", "--prior",
                 str(adm_fixtures / "tiny_a.pt"), "--steps", "3", "--num-samples", "3", "--repulsion", "0.5",
                 "--output", str(out), "--no-progress", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    run = json.loads((out / "coffee" / "run.json").read_text())
    assert run["solver"]["repulsion"] == 0.5 and run["settings"]["num_samples"] == 3
    samples = run["metrics"]["samples"]
    assert samples["count"] == 3 and len(samples["psnr"]) == 3 and samples["spread_max"] >= samples["spread_mean"] > 0
    paths = run["outputs"]["samples"]
    assert [p.rsplit("/", 1)[1] for p in paths] == ["sample_00.png", "sample_01.png", "sample_02.png"]
    size = Image.open(run["outputs"]["estimate"]).size
    assert all(Image.open(p).size == size for p in paths) and Image.open(run["outputs"]["spread"]).size == size
    # a repulsion without several samples does nothing, and says so
    code = main(["solve", "--input", str(small_image), "--task", "inpaint-box", "--prior",
                 str(adm_fixtures / "tiny_a.pt"), "--steps", "2", "--repulsion", "0.5", "--output",
                 str(tmp_path / "one"), "--no-progress"])
    assert code == 0 and "does nothing without --num-samples" in capsys.readouterr().err


def test_samplers_say_when_they_have_too_few_steps():
    prior, problem, _ = ring_problem(0, 2)
    for solver, few, enough in ((DPS, 10, 50), (PiGDM, 5, 20)):
        seen = []
        solver(steps=few)(prior, problem, callback=lambda info, seen=seen: seen.append(info.note))
        assert seen[0] is not None and f"--steps {solver.min_steps}" in seen[0] and seen[1:] == [None] * (few - 1)
        seen = []
        solver(steps=enough)(prior, problem, callback=lambda info, seen=seen: seen.append(info.note))
        assert seen == [None] * enough


def test_measurement_fit_of_exact_blank_and_unrelated_estimates():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 1.6 - 0.8
    op = make_operator("sr:2", (3, 8, 8))
    y = op.A(x)
    assert measurement_fit(op, y, x) == pytest.approx(0.0, abs=1e-6)
    assert measurement_fit(op, y, torch.zeros_like(x)) == pytest.approx(1.0)
    assert measurement_fit(op, y, -x) > 1.9  # the negative fits worse than a blank image
    assert measurement_fit(op, y, 10 * x) < measurement_fit(op, y, 10 * x, data_range=None)  # clipped as saved


@dataclass(frozen=True)
class _Negate(Solver):
    """Returns the negated pseudo-inverse: an estimate unrelated to the measurement."""

    name = ""
    label = "Negate"

    def __call__(self, prior, problem, generator=None, callback=None):
        return -problem.operator.A_dagger(problem.y)


def test_an_estimate_that_does_not_fit_is_reported(tiny_prior):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 1.6 - 0.8
    op = make_operator("sr:2", (3, 16, 16))
    jobs = [Job("bad", op, op.A(x), Seeds(0, 1), clean=x)]
    said: list[str] = []
    (out,) = solve_jobs(_Negate(), tiny_prior, jobs, torch.device("cpu"), GaussianNoise(0.0), say=said.append)
    assert any("fits the measurement no better than a blank image" in n for n in out.notes)
    assert said and said[0].startswith("reddiff: warning: Negate's estimate of bad")
    (good,) = solve_jobs(RedDiff(steps=2, lr=0.01), tiny_prior, [Job("ok", op, op.A(x), Seeds(0, 1), clean=x)],
                         torch.device("cpu"), GaussianNoise(0.0))
    assert not any("blank image" in n for n in good.notes)
