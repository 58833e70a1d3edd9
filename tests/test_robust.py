"""Outliers in simulated measurements, and the robust data terms that resist them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reddiff import DPS, Problem, RedDiff, load_prior
from reddiff.cli import main
from reddiff.errors import ReddiffError, SolverError
from reddiff.experiment import restore
from reddiff.noise import GaussianNoise, Outliers, PoissonNoise, Robust, parse_robust, robust_noise


def test_outliers_corrupt_the_share_asked_for_with_both_signs_reproducibly():
    noise = Outliers(GaussianNoise(0.02), 0.1)
    clean = torch.zeros(4, 3, 32, 32)
    y = noise.sample(clean, torch.Generator().manual_seed(0))
    hit = y.abs() == 1
    assert abs(hit.float().mean().item() - 0.1) < 0.01
    assert abs((y == 1).float().mean().item() - 0.05) < 0.01
    assert y[~hit].std().item() == pytest.approx(0.02, rel=0.05)  # the others: the base model's noise
    assert torch.equal(y, noise.sample(clean, torch.Generator().manual_seed(0)))
    # the solver is not told: the data terms are the base model's
    ax = torch.randn(4, 3, 32, 32)
    assert torch.equal(noise.nll(y, ax), GaussianNoise(0.02).nll(y, ax))
    assert noise.params() == {"noise": "gaussian", "sigma_y": 0.02, "outliers": 0.1}
    with pytest.raises(ReddiffError, match="0 <= F < 1"):
        Outliers(GaussianNoise(0.02), 1.0)


@pytest.mark.parametrize("kind", ["huber", "cauchy"])
def test_robust_penalties_are_the_square_for_small_residuals_and_grow_slowly_beyond(kind):
    noise = Robust(GaussianNoise(0.1), kind, 0.2)
    r = torch.tensor([[1e-4, -1e-3, 0.5, -3.0]], dtype=torch.float64)
    rho = noise.rho(r)
    torch.testing.assert_close(rho[0, :2], 0.5 * r[0, :2] ** 2, rtol=1e-4, atol=0)
    if kind == "huber":
        expected = 0.2 * (r[0, 2:].abs() - 0.1)
    else:
        expected = 0.5 * 0.04 * torch.log1p((r[0, 2:] / 0.2) ** 2)
    torch.testing.assert_close(rho[0, 2:], expected)
    assert (rho[0, 2:] < 0.5 * r[0, 2:] ** 2).all()
    y, ax = r, torch.zeros_like(r)
    torch.testing.assert_close(noise.nll(y, ax), rho.mean(dim=1))
    torch.testing.assert_close(noise.nll_sum(y, ax), rho.sum(dim=1) / 0.01)
    torch.testing.assert_close(noise.residual_norm(y, ax), (2 * 4 * rho.mean(dim=1)).sqrt())


def test_robust_specs_and_their_refusals():
    assert parse_robust("none") == ("none", None)
    assert parse_robust("Huber") == ("huber", None) and parse_robust("cauchy:0.02") == ("cauchy", 0.02)
    assert robust_noise("huber:0.02", GaussianNoise(0.1)).delta == pytest.approx(0.04)  # 0..1 -> [-1, 1] units
    base = GaussianNoise(0.1)
    assert robust_noise("none", base) is base
    for bad in ("l1", "huber:0", "huber:x", "none:1", "huber:1e-200", "cauchy:5"):
        with pytest.raises(ReddiffError) as err:
            parse_robust(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ReddiffError, match="for Gaussian noise"):
        robust_noise("huber", PoissonNoise(20))
    with pytest.raises(SolverError, match="RED-diff: unknown robust data term"):
        RedDiff(robust="tukey")
    assert RedDiff(robust=" Huber:0.1").robust == "huber:0.1"  # one spelling, one settings fingerprint
    with pytest.raises(ReddiffError, match="already has a robust data term"):
        robust_noise("huber", robust_noise("cauchy", GaussianNoise(0.1)))


def test_despeckle_replaces_isolated_spikes_only():
    noise = Robust(GaussianNoise(0.02), "huber", 0.1)
    y = torch.linspace(-0.5, 0.5, 64).reshape(1, 1, 8, 8).repeat(1, 3, 1, 1)
    spiky = y.clone()
    spiky[0, 1, 3, 4] = 1.0
    spiky[0, 0, 6, 2] = -1.0
    out, replaced = noise.despeckle(spiky)
    assert (out - y).abs().max() < 0.1 and (out != spiky).sum() == 2 == replaced
    assert torch.equal(noise.despeckle(y)[0], y)  # a smooth ramp keeps every value
    assert noise.despeckle(y)[1] == 0
    flat = torch.randn(2, 10)
    assert noise.despeckle(flat)[0] is flat


def test_robust_starts_filter_pictures_only_and_notes_add_up():
    """Phase retrieval's Fourier magnitudes are not a picture: no median filter there. An operator without any
    estimate gets both notes when its start is despeckled too."""
    from reddiff import make_operator
    from reddiff.operators.user import CallableOperator
    from reddiff.solvers.reddiff import RedDiff as RD

    noise = Outliers(GaussianNoise(0.02), 0.05)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    phase = make_operator("phase-retrieval", (3, 16, 16))
    y = noise.sample(phase.A(x), torch.Generator().manual_seed(1))
    _, note = RD(robust="huber").start(Problem(y, phase, noise=noise), [torch.Generator().manual_seed(2)])
    assert note is None
    def cube_fn(v):
        return v**3

    cube_fn.measurement_is_image = True  # a user operator says its measurement is a picture
    cube = CallableOperator(cube_fn, (3, 16, 16), (3, 16, 16), "cube")
    y = noise.sample(cube.A(x), torch.Generator().manual_seed(1))
    mu, note = RD(robust="huber").start(Problem(y, cube, noise=noise), [torch.Generator().manual_seed(2)])
    assert "stood out from their 3x3 neighbourhood" in note and "has no A_dagger" in note
    assert (mu.abs() == 1).float().mean() < (y.abs() == 1).float().mean() / 3  # most outliers are gone


def test_robust_terms_restore_what_outliers_ruin(tmp_path):
    """Deblurring with 10 % salt-and-pepper outliers: the squared data term follows the outliers, the robust ones
    win back most of the clean-measurement result (bundled prior and preset, 32 px: 8.8 dB squared, 23.9 robust,
    29.8 without outliers)."""
    from skimage import data

    prior = load_prior("bundled")
    img = torch.from_numpy(data.coffee()[100:164:2, 200:264:2].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    clean = restore(prior, img, "deblur-gauss", 0.02, seed=3).psnr
    noisy = Outliers(GaussianNoise(0.02), 0.1)
    psnr = {term: restore(prior, img, "deblur-gauss", noisy, seed=3, robust=term).psnr
            for term in ("none", "huber", "cauchy")}
    assert psnr["huber"] > psnr["none"] + 10 and psnr["cauchy"] > psnr["none"] + 10, psnr
    assert min(psnr["huber"], psnr["cauchy"]) > clean - 7, (psnr, clean)


def test_dps_takes_the_robust_data_term():
    prior = load_prior("bundled")
    x = torch.zeros(1, 3, 16, 16)
    from reddiff import make_operator

    op = make_operator("denoise", (3, 16, 16))
    y = Outliers(GaussianNoise(0.1), 0.2).sample(op.A(x), torch.Generator().manual_seed(0))
    out = {term: DPS(steps=5, robust=term)(prior, Problem(y, op, 0.1), torch.Generator().manual_seed(1))
           for term in ("none", "cauchy")}
    assert all(torch.isfinite(v).all() for v in out.values()) and not torch.equal(out["none"], out["cauchy"])


def test_the_outlier_and_robust_flags(capsys, tmp_path, small_image):
    args = ["solve", "--task", "deblur-gauss", "--input", str(small_image), "--sigma-y", "0.01", "--steps", "3",
            "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "o"), "--outliers", "0.05", "--robust", "huber:0.02"]) == 0
    rec = json.loads((tmp_path / "o/coffee/run.json").read_text())
    assert rec["noise"]["outliers"] == 0.05 and rec["solver"]["robust"] == "huber:0.02"
    assert any("3x3 neighbourhood" in n for n in rec["notes"])
    capsys.readouterr()
    for extra, needle in ((["--outliers", "1"], "0 <= F < 1"), (["--robust", "l2"], "unknown robust data term"),
                          (["--outliers", "-0.1"], "must be >= 0")):
        assert main([*args, "--output", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("reddiff: error") + err.count("error:") >= 1, err
        assert not (tmp_path / "x").exists()
    assert math.isfinite(rec["metrics"]["psnr"])
