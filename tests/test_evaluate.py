"""``reddiff evaluate`` and :func:`reddiff.evaluate`: the protocol's preparation and seeds, one measurement per image
for every solver, scores from the written files by the one scoring rule, mean and standard error, perceptual columns
when the metric networks are present, resuming after a kill, sharding, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from reddiff.cli import main
from reddiff.experiment import score
from reddiff.experiment.evaluation import PROTOCOLS, centre_crop_resize, mean_and_se
from reddiff.io import load_image


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def data(tmp_path):
    """Three held-out crops of different sizes and shapes."""
    from skimage import data as skd

    d = tmp_path / "data"
    d.mkdir()
    Image.fromarray(skd.astronaut()[::8, ::8]).save(d / "astronaut.png")  # 64 x 64
    Image.fromarray(skd.chelsea()[100:160, 150:230]).save(d / "chelsea.png")  # 60 x 80
    Image.fromarray(skd.coffee()[::6, ::6]).save(d / "coffee.jpg")  # 67 x 100
    return d


@pytest.fixture()
def prior_args(adm_fixtures):
    return ["--prior", str(adm_fixtures / "tiny_a.pt"), "--no-progress"]


def test_centre_crop_resize_rule():
    """A square image of the size is kept exactly; a wide one keeps its middle; a large one is halved by box
    filters first (a constant stays constant, and a 4x4 checkerboard much finer than the output averages to grey)."""
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    x = torch.round((x + 1) * 127.5) / 127.5 - 1  # 8-bit values, as read from a file
    assert torch.allclose(centre_crop_resize(x, 32), x, atol=1e-6)
    wide = -torch.ones(1, 3, 32, 96)
    wide[..., 32:64] = 1.0  # white middle third
    out = centre_crop_resize(wide, 32)
    assert out.shape == (1, 3, 32, 32) and out.min() > 0.99
    fine = torch.ones(1, 3, 256, 256)
    fine[..., ::2, ::2] = fine[..., 1::2, 1::2] = -1  # pixel checkerboard: box halving averages it exactly
    out = centre_crop_resize(fine, 32)
    assert out.shape == (1, 3, 32, 32) and out.abs().max() < 0.01


def test_mean_and_standard_error():
    vals = [21.5, 23.0, 19.75, 25.25]
    mean, se = mean_and_se(vals)
    assert mean == pytest.approx(statistics.mean(vals))
    assert se == pytest.approx(statistics.stdev(vals) / math.sqrt(4))
    assert mean_and_se([3.0]) == (3.0, None)


def test_protocols_state_their_source_and_noise_in_pixel_units():
    for p in PROTOCOLS.values():
        assert p.source and p.size == 256
        assert p.sigma_y in (0.0, 0.025)  # 0.05 in [-1, 1] units, as DPS reports it
    assert PROTOCOLS["reddiff-inpaint-freeform"].task == "inpaint-freeform"


def test_evaluate_end_to_end(capsys, tmp_path, data, prior_args):
    out = tmp_path / "ev"
    code, stdout, err = run(capsys, "evaluate", "--data", data, "--task", "sr:2", "--sigma-y", "0.02", "--size", "32",
                            "--solvers", "reddiff,dps,ddrm", "--steps", "3", "--output", out, "--json", *prior_args)
    assert code == 0, err
    rep = json.loads(stdout)
    names = ["astronaut", "chelsea", "coffee"]
    assert rep["images"] == 3 and rep["size"] == 32 and rep["metrics"] == ["psnr", "ssim"]
    assert "lpips, fid, kid left out" in err and len([ln for ln in err.splitlines() if "note" in ln]) == 1
    for name in names:
        ref = load_image(out / "references" / f"{name}.png")
        assert ref.shape == (1, 3, 32, 32)
        assert (out / "measurements" / f"{name}.png").is_file()
    for solver in ("reddiff", "dps", "ddrm"):
        per = {r["image"]: r for r in rep["per_image"][solver]}
        assert sorted(per) == names
        for name in names:
            est = load_image(out / solver / f"{name}.png")
            ref = load_image(out / "references" / f"{name}.png")
            want = score(est, ref)
            assert per[name]["psnr"] == pytest.approx(want.psnr) and per[name]["ssim"] == pytest.approx(want.ssim)
            record = json.loads((out / solver / f"{name}.json").read_text())
            assert record["network_evals"] == 3 and record["settings"]["solver"]["steps"] == 3
        mean, se = mean_and_se([per[n]["psnr"] for n in names])
        assert rep["solvers"][solver]["psnr"] == {"mean": pytest.approx(mean), "se": pytest.approx(se)}
    # every solver saw the same measurement: the record's settings differ only in the solver
    a = json.loads((out / "reddiff" / "coffee.json").read_text())["settings"]
    b = json.loads((out / "ddrm" / "coffee.json").read_text())["settings"]
    assert {k: v for k, v in a.items() if k != "solver"} == {k: v for k, v in b.items() if k != "solver"}
    md = (out / "evaluation.md").read_text()
    assert md.startswith("| solver | PSNR ↑ | SSIM ↑ |") and md.count("\n") == 5
    grid = Image.open(out / "grid.png")
    assert grid.size[0] > 5 * 32 and grid.size[1] > 3 * 32  # 3 rows; measurement, 3 solvers, reference
    # the same command again: everything is reused
    code, stdout, err = run(capsys, "evaluate", "--data", data, "--task", "sr:2", "--sigma-y", "0.02", "--size", "32",
                            "--solvers", "reddiff,dps,ddrm", "--steps", "3", "--output", out, "--json", *prior_args)
    assert code == 0 and json.loads(stdout)["skipped"] == 9
    assert json.loads(stdout)["solvers"] == rep["solvers"]


def test_python_api_gives_the_cli_numbers(capsys, tmp_path, data, adm_fixtures, prior_args):
    from reddiff import evaluate, load_prior
    from reddiff.solvers import DDRM

    prior = load_prior(adm_fixtures / "tiny_a.pt", progress=False)  # as the CLI loads it
    rep = evaluate(prior, data, tmp_path / "api", task="inpaint-box", size=32, limit=2,
                   solvers={"ddrm": DDRM(steps=3)}, metrics=["psnr"])
    code, stdout, err = run(capsys, "evaluate", "--data", data, "--task", "inpaint-box", "--size", "32", "--limit",
                            "2", "--solvers", "ddrm", "--steps", "3", "--metrics", "psnr", "--output",
                            tmp_path / "cli", "--json", *prior_args)
    assert code == 0, err
    cli = json.loads(stdout)
    assert rep["images"] == 2 and [r["psnr"] for r in rep["per_image"]["ddrm"]] == pytest.approx(
        [r["psnr"] for r in cli["per_image"]["ddrm"]])


def test_solver_that_cannot_use_the_operator_is_reported_not_run(capsys, tmp_path, data, prior_args):
    code, stdout, err = run(capsys, "evaluate", "--data", data, "--task", "deblur-motion", "--size", "32", "--limit",
                            "1", "--solvers", "reddiff,ddrm", "--steps", "2", "--output", tmp_path / "m", "--json",
                            *prior_args)
    assert code == 0, err
    rep = json.loads(stdout)
    assert list(rep["solvers"]) == ["reddiff"] and "DDRM cannot use" in rep["refused"]["ddrm"]
    assert "Not run: ddrm" in (tmp_path / "m" / "evaluation.md").read_text()


def test_perceptual_columns_with_metric_networks(capsys, tmp_path, data, prior_args, monkeypatch):
    """With the metric networks present (random weights stand in for the published ones), LPIPS is scored per
    image on the saved files and FID/KID over the set, by the same functions the metric tests check."""
    from reddiff.metrics import LPIPS, InceptionFeatures, fid_from_features, kid_from_features, registry, weights

    torch.manual_seed(0)
    lp, inc = LPIPS("alex"), InceptionFeatures()
    monkeypatch.setattr(registry, "find_weights", lambda name: tmp_path / f"{name}.pth")
    monkeypatch.setattr(weights, "find_weights", lambda name: tmp_path / f"{name}.pth")
    monkeypatch.setattr(LPIPS, "published", classmethod(lambda cls, net="alex": lp))
    monkeypatch.setattr(InceptionFeatures, "published", classmethod(lambda cls: inc))
    out = tmp_path / "p"
    code, stdout, err = run(capsys, "evaluate", "--data", data, "--task", "inpaint-box", "--size", "32",
                            "--solvers", "ddrm", "--steps", "2", "--metrics", "psnr,lpips,fid,kid", "--output", out,
                            "--json", *prior_args)
    assert code == 0, err
    rep = json.loads(stdout)
    names = ["astronaut", "chelsea", "coffee"]
    ests = torch.cat([load_image(out / "ddrm" / f"{n}.png") for n in names])
    refs = torch.cat([load_image(out / "references" / f"{n}.png") for n in names])
    with torch.no_grad():
        want_lpips = lp(ests, refs)
        fe, fr = inc(ests).double(), inc(refs).double()
    got = [r["lpips"] for r in rep["per_image"]["ddrm"]]
    assert got == pytest.approx(want_lpips.tolist(), rel=1e-4, abs=1e-6)
    s = rep["solvers"]["ddrm"]
    assert s["fid"]["value"] == pytest.approx(fid_from_features(fe, fr), rel=1e-4)
    assert s["kid"]["value"] == pytest.approx(kid_from_features(fe, fr)[0] * 1e3, rel=1e-3, abs=1e-6)
    table = (out / "evaluation.md").read_text()
    assert "LPIPS ↓" in table and "KID ↓ (×10³)" in table


def test_bad_input_gives_one_line(capsys, tmp_path, data, prior_args):
    base = ["evaluate", "--data", data, "--size", "32", "--steps", "2", "--solvers", "ddrm", *prior_args]

    def fails(*extra, match):
        code, _, err = run(capsys, *base, *extra)
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("reddiff: note")]
        assert code == 2 and len(lines) == 1 and match in lines[0], err

    fails("--output", tmp_path / "a", match="give a task (--task) or a protocol")
    fails("--task", "sr:3x", "--output", tmp_path / "a", match="sr")
    fails("--task", "sr:2", "--metrics", "psnr,sharpness", "--output", tmp_path / "a",
          match="unknown metric(s) sharpness")
    fails("--task", "sr:2", "--metrics", "lpips", "--output", tmp_path / "a", match="alexnet-owt-7be5be79.pth")
    fails("--task", "sr:2", "--size", "128", "--output", tmp_path / "a", match="smaller than the evaluation size 128")
    fails("--task", "sr:2", "--protocol", "nope", "--output", tmp_path / "a", match="--protocol")
    code, _, err = run(capsys, "evaluate", "--data", tmp_path / "none", "--task", "sr:2", "--output", tmp_path / "a",
                       *prior_args)
    assert code == 2 and "none" in err
    assert not (tmp_path / "a").exists()  # nothing written by a refused command
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.png").write_text("not an image")
    code, _, err = run(capsys, "evaluate", "--data", junk, "--task", "sr:2", "--size", "32", "--output",
                       tmp_path / "a", *prior_args)
    assert code == 2 and "notes.png" in err and len(err.strip().splitlines()) == 1
    # other settings into a finished folder
    assert run(capsys, *base, "--task", "sr:2", "--limit", "1", "--output", tmp_path / "b")[0] == 0
    code, _, err = run(capsys, *base, "--task", "sr:2", "--limit", "1", "--seed", "5", "--output", tmp_path / "b")
    assert code == 2 and "other settings" in err and "--overwrite" in err


def test_killed_evaluation_resumes_to_the_uninterrupted_result(tmp_path, data, adm_fixtures, run_reddiff,
                                                              stop_after_first):
    out = tmp_path / "out"
    args = ["evaluate", "--data", str(data), "--task", "inpaint-box", "--size", "32", "--solvers", "reddiff,ddrm",
            "--steps", "60", "--prior", str(adm_fixtures / "tiny_a.pt"), "--no-progress", "--output", str(out)]
    code, err = stop_after_first(args, out, "*/*.json")
    assert code == 143, err
    assert "resume" in err.strip().splitlines()[-1]
    finished = sorted(out.glob("*/*.json"))
    assert 1 <= len(finished) < 6 and not list(out.rglob("*.part"))
    again = run_reddiff(*args, "--json", timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["skipped"] == len(finished)
    ref = run_reddiff(*args[:-1], tmp_path / "ref", timeout=600)
    assert ref.returncode == 0, ref.stderr
    for solver in ("reddiff", "ddrm"):
        for name in ("astronaut", "chelsea", "coffee"):
            a = np.asarray(Image.open(out / solver / f"{name}.png"))
            b = np.asarray(Image.open(tmp_path / "ref" / solver / f"{name}.png"))
            assert np.array_equal(a, b), (solver, name)


def test_two_processes_match_one(tmp_path, data, adm_fixtures, run_reddiff):
    args = ["evaluate", "--data", str(data), "--task", "sr:2", "--sigma-y", "0.02", "--size", "32", "--solvers",
            "reddiff,ddrm", "--steps", "3", "--prior", str(adm_fixtures / "tiny_a.pt"), "--no-progress", "--json"]
    one = run_reddiff(*args, "--output", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = run_reddiff(*args, "--output", tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads(one.stdout)
    b = json.loads([line for line in two.stdout.splitlines() if line.startswith("{")][-1])

    def scores(rep):  # everything but the timings
        return {s: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
                for s, rows in rep["per_image"].items()}

    assert len(b["per_image"]["reddiff"]) == 3
    assert scores(a) == scores(b), (scores(a), scores(b))


def test_readme_lists_every_protocol_with_its_task():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for p in PROTOCOLS.values():
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{p.name}` |")), None)
        assert row is not None, f"README lacks protocol {p.name}"
        assert f"`{p.task}`" in row and f"| {p.sigma_y:g} |" in row and f"| {p.size} |" in row
