"""The command line, end to end on small images with the tiny fixture prior."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from reddiff.cli import main

STEPS = ["--steps", "3"]


@pytest.fixture()
def prior_args(adm_fixtures):
    return ["--prior", str(adm_fixtures / "tiny_a.pt"), "--no-progress"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_solve_writes_outputs_and_json(capsys, tmp_path, small_image, prior_args):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "solve", "--task", "sr:4", "--input", small_image, "--output", out_dir,
                         "--sigma-y", "0.01", "--json", *STEPS, *prior_args)
    assert code == 0, err
    res = json.loads(out)
    assert set(res) >= {"psnr", "ssim", "outputs", "seconds"}
    assert 5 < res["psnr"] < 60 and -1 <= res["ssim"] <= 1
    d = out_dir / "coffee"
    names = sorted(p.name for p in d.iterdir())
    assert names == ["estimate.png", "grid.png", "measurement.png", "run.json"]
    assert Image.open(d / "estimate.png").size == (32, 32)
    assert Image.open(d / "measurement.png").size == (8, 8)
    run_rec = json.loads((d / "run.json").read_text())
    assert run_rec["task"]["task"] == "sr:4"
    assert run_rec["solver"]["steps"] == 3 and run_rec["solver"]["lr"] == 0.1 and run_rec["solver"]["lam"] == 0.25
    assert run_rec["sigma_y"] == {"pixel_0_1": 0.01, "internal_-1_1": 0.02}
    assert len(run_rec["prior"]["sha256"]) == 64
    assert run_rec["metrics"]["psnr"] == pytest.approx(res["psnr"])
    assert {"base", "operator", "solver"} <= set(run_rec["seeds"])
    assert run_rec["reddiff_version"]


def test_solve_is_deterministic_and_refuses_to_overwrite(capsys, tmp_path, small_image, prior_args):
    args = ["solve", "--task", "inpaint-random:0.5", "--input", small_image, *STEPS, *prior_args]
    assert run(capsys, *args, "--output", tmp_path / "a")[0] == 0
    assert run(capsys, *args, "--output", tmp_path / "b")[0] == 0
    a = np.asarray(Image.open(tmp_path / "a/coffee/estimate.png"))
    b = np.asarray(Image.open(tmp_path / "b/coffee/estimate.png"))
    assert np.array_equal(a, b)
    before = (tmp_path / "a/coffee/run.json").read_text()
    code, out, err = run(capsys, *args, "--output", tmp_path / "a", "--json")  # same settings: done, skipped
    assert code == 0 and json.loads(out)["skipped"] == 1
    assert (tmp_path / "a/coffee/run.json").read_text() == before
    code, _, err = run(capsys, *args, "--output", tmp_path / "a", "--seed", "5")  # other settings
    assert code == 2 and "other settings" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "a/coffee/run.json").read_text() == before
    assert run(capsys, *args, "--output", tmp_path / "a", "--overwrite", "--seed", "5")[0] == 0
    c = np.asarray(Image.open(tmp_path / "a/coffee/estimate.png"))
    assert not np.array_equal(a, c)


def test_folder_batching_matches_one_by_one(capsys, tmp_path, small_image, prior_args):
    folder = tmp_path / "imgs"
    folder.mkdir()
    img = Image.open(small_image)
    img.save(folder / "one.png")
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "two.png")
    img.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(folder / "three.png")
    base = ["solve", "--task", "inpaint-random:0.6", "--input", folder, "--sigma-y", "0.02", *STEPS, *prior_args]
    code, out, err = run(capsys, *base, "--output", tmp_path / "b1", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert len(summary["images"]) == 3 and (tmp_path / "b1/metrics.json").is_file()
    assert run(capsys, *base, "--output", tmp_path / "b3", "--batch-size", "3")[0] == 0
    for name in ("one", "two", "three"):
        a = np.asarray(Image.open(tmp_path / f"b1/{name}/estimate.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / f"b3/{name}/estimate.png")).astype(int)
        assert np.abs(a - b).max() <= 1, name  # same per-image seeds; batched convs may round differently


def test_degrade_then_solve_measurement_round_trip(capsys, tmp_path, small_image, prior_args):
    code, out, err = run(capsys, "degrade", "--task", "inpaint-random:0.7", "--input", small_image,
                         "--output", tmp_path / "deg", "--seed", "3")
    assert code == 0, err
    y_png, mask_png = tmp_path / "deg/coffee.png", tmp_path / "deg/coffee.mask.png"
    assert y_png.is_file() and mask_png.is_file()
    mask = np.asarray(Image.open(mask_png))
    assert abs((mask == 0).mean() - 0.7) < 0.01
    rec = json.loads((tmp_path / "deg/coffee.json").read_text())
    assert rec["task"]["task"] == "inpaint-random:0.7"
    for extra in (["--mask", mask_png], ["--seed", "3"]):  # the mask file, or the same seed, rebuild the operator
        out_dir = tmp_path / f"sol{len(extra[1].__str__())}"
        code, out, err = run(capsys, "solve", "--task", "inpaint-random:0.7", "--measurement", y_png,
                             "--output", out_dir, "--json", *extra, *STEPS, *prior_args)
        assert code == 0, err
        res = json.loads(out)
        assert res["psnr"] is None
        est = np.asarray(Image.open(out_dir / "coffee/estimate.png")).astype(int)
        # observed pixels stay close to the measurement
        y = np.asarray(Image.open(y_png)).astype(int)
        obs = mask > 0
        assert np.abs(est[obs] - y[obs]).mean() < 40


def test_degrade_sr_measurement_has_the_small_size(capsys, tmp_path, small_image, prior_args):
    assert run(capsys, "degrade", "--task", "sr:2", "--input", small_image, "--output", tmp_path / "d")[0] == 0
    assert Image.open(tmp_path / "d/coffee.png").size == (16, 16)
    code, out, err = run(capsys, "solve", "--task", "sr:2", "--measurement", tmp_path / "d/coffee.png",
                         "--output", tmp_path / "s", *STEPS, *prior_args)
    assert code == 0, err
    assert Image.open(tmp_path / "s/coffee/estimate.png").size == (32, 32)


def test_eval(capsys, tmp_path, small_image, prior_args):
    assert run(capsys, "solve", "--task", "denoise", "--input", small_image, "--output", tmp_path / "o",
               "--sigma-y", "0.05", *STEPS, *prior_args)[0] == 0
    code, out, err = run(capsys, "eval", "--pred", tmp_path / "o", "--ref", small_image, "--json")
    assert code == 0, err
    res = json.loads(out)
    rec = json.loads((tmp_path / "o/coffee/run.json").read_text())
    assert res["psnr"] == pytest.approx(rec["metrics"]["psnr"], abs=1e-6)
    code, out, _ = run(capsys, "eval", "--pred", tmp_path / "o", "--ref", small_image)
    assert code == 0 and "mean" in out


def test_list(capsys):
    code, out, _ = run(capsys, "list", "tasks")
    assert code == 0
    for task in ("denoise", "inpaint-box", "inpaint-center", "inpaint-half", "inpaint-random", "inpaint-freeform",
                 "inpaint-mask", "sr", "bicubic", "deblur-gauss", "deblur-uniform", "deblur-motion", "colorize"):
        assert task in out
    code, out, _ = run(capsys, "list", "--json")
    data = json.loads(out)
    assert {"imagenet256-uncond", "ffhq256"} <= set(data["priors"]) and "reddiff" in data["solvers"]


def _one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--task", "sharpen"], ["unknown task 'sharpen'", "inpaint-random"]),
        (["--task", "inpaint-random:1.5"], ["inpaint-random", "0 < P < 1"]),
        (["--task", "sr:x"], ["sr"]),
        (["--task", "sr:4", "--sigma-y", "-0.1"], ["--sigma-y", ">= 0"]),
        (["--task", "sr:4", "--steps", "0"], ["--steps", ">= 1"]),
        (["--task", "sr:4", "--lr", "0"], ["--lr", "> 0"]),
        (["--task", "sr:4", "--lr", "nan"], ["--lr", "> 0", "nan"]),
        (["--task", "sr:4", "--weighting", "cubic"], ["--weighting", "linear"]),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, tmp_path, small_image, prior_args, args, needles):
    code, _, err = run(capsys, "solve", "--input", small_image, "--output", tmp_path / "o", *args, *STEPS,
                       *prior_args)
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


def test_bad_files_are_one_line_errors(capsys, tmp_path, small_image, adm_fixtures):
    prior = ["--prior", str(adm_fixtures / "tiny_a.pt"), "--no-progress", *STEPS]
    code, _, err = run(capsys, "solve", "--task", "sr:4", "--input", tmp_path / "nope.png", "--output",
                       tmp_path / "o", *prior)
    _one_line_error(code, err, "nope.png")
    txt = tmp_path / "notes.png"
    txt.write_text("hello")
    code, _, err = run(capsys, "solve", "--task", "sr:4", "--input", txt, "--output", tmp_path / "o", *prior)
    _one_line_error(code, err, "notes.png", "image")
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run(capsys, "solve", "--task", "sr:4", "--input", small_image, "--output", afile, *prior)
    _one_line_error(code, err, "is a file")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small_mask.png")
    code, _, err = run(capsys, "solve", "--task", "inpaint-mask", "--measurement", small_image, "--mask",
                       tmp_path / "small_mask.png", "--output", tmp_path / "o", *prior)
    _one_line_error(code, err, "mask", "8x8", "32x32")
    code, _, err = run(capsys, "solve", "--task", "sr:3", "--input", small_image, "--output", tmp_path / "o",
                       *prior)
    _one_line_error(code, err, "3")
    assert not (tmp_path / "o").exists()


def test_bad_checkpoints_are_one_line_errors(capsys, tmp_path, small_image, adm_fixtures):
    raw = (adm_fixtures / "tiny_a.pt").read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(raw[: len(raw) // 2])
    base = ["solve", "--task", "sr:4", "--input", small_image, "--output", tmp_path / "o", "--no-progress", *STEPS]
    code, _, err = run(capsys, *base, "--prior", trunc)
    _one_line_error(code, err, "trunc.pt")
    cfg = tmp_path / "wrong.json"
    cfg.write_text(json.dumps({"image_size": 32, "num_channels": 64, "num_res_blocks": 1, "learn_sigma": True}))
    code, _, err = run(capsys, *base, "--prior", adm_fixtures / "tiny_a.pt", "--prior-config", cfg)
    _one_line_error(code, err)
    code, _, err = run(capsys, *base, "--prior", "no-such-prior")
    _one_line_error(code, err, "no-such-prior", "imagenet256-uncond")
    assert not (tmp_path / "o").exists()


def test_grayscale_input_is_converted_with_a_notice(capsys, tmp_path, small_image, prior_args):
    gray = tmp_path / "gray.png"
    Image.open(small_image).convert("L").save(gray)
    code, _, err = run(capsys, "solve", "--task", "colorize", "--input", gray, "--output", tmp_path / "o",
                       *STEPS, *prior_args)
    assert code == 0 and "grayscale" in err


def test_help_lists_every_option_with_defaults(capsys):
    assert main(["solve", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--task", "--input", "--measurement", "--mask", "--output", "--prior", "--prior-config", "--solver",
                "--steps", "--lr", "--lam", "--weighting", "--sigma-y", "--seed", "--batch-size", "--json",
                "--overwrite"):
        assert opt in out, opt
    flat = " ".join(out.split())
    assert "0..1 pixel units" in flat and "reddiff 1000" in flat and "(default: bundled)" in flat


def test_console_script_and_module_entry_point(tmp_path):
    res = subprocess.run([sys.executable, "-m", "reddiff", "list", "solvers"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 0 and "reddiff" in res.stdout
    res = subprocess.run([sys.executable, "-m", "reddiff", "solve", "--task", "sr:4"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("solver", ["dps", "pigdm", "ddrm", "ddim"])
def test_solve_with_other_solvers(capsys, tmp_path, small_image, prior_args, solver):
    code, out, err = run(capsys, "solve", "--task", "sr:2", "--input", small_image, "--output", tmp_path / "o",
                         "--solver", solver, "--steps", "2", "--json", *prior_args)
    assert code == 0, err
    rec = json.loads((tmp_path / "o/coffee/run.json").read_text())
    assert rec["solver"]["solver"] == solver and rec["solver"]["steps"] == 2
    assert rec["network_evals"] >= 2


def test_pigdm_guidance_scale_reaches_the_solver(capsys, tmp_path, small_image, prior_args):
    code, _, err = run(capsys, "solve", "--task", "sr:2", "--input", small_image, "--output", tmp_path / "o",
                       "--solver", "pigdm", "--steps", "2", "--guidance-scale", "0.25", *prior_args)
    assert code == 0, err
    rec = json.loads((tmp_path / "o/coffee/run.json").read_text())
    assert rec["solver"]["solver"] == "pigdm" and rec["solver"]["guidance_scale"] == 0.25
    assert rec["solver"]["clip_x0"] is True
    code, _, err = run(capsys, "solve", "--task", "sr:2", "--input", small_image, "--output", tmp_path / "q",
                       "--solver", "pigdm", "--steps", "2", "--no-clip-x0", *prior_args)
    assert code == 0, err
    assert json.loads((tmp_path / "q/coffee/run.json").read_text())["solver"]["clip_x0"] is False
    code, _, err = run(capsys, "solve", "--task", "sr:2", "--input", small_image, "--output", tmp_path / "p",
                       "--solver", "dps", "--guidance-scale", "0.5", *prior_args)
    _one_line_error(code, err, "--guidance-scale does not apply to --solver dps")
    code, _, err = run(capsys, "solve", "--task", "sr:2", "--input", small_image, "--output", tmp_path / "p",
                       "--solver", "ddrm", "--no-clip-x0", *prior_args)
    _one_line_error(code, err, "--no-clip-x0 does not apply to --solver ddrm")


def test_solver_options_are_checked(capsys, tmp_path, small_image, prior_args):
    code, _, err = run(capsys, "solve", "--task", "sr:2", "--input", small_image, "--output", tmp_path / "o",
                       "--solver", "ddrm", "--lr", "0.5", *prior_args)
    _one_line_error(code, err, "--lr does not apply to --solver ddrm")
    code, _, err = run(capsys, "solve", "--task", "deblur-motion", "--input", small_image, "--output",
                       tmp_path / "o", "--solver", "ddrm", "--steps", "2", *prior_args)
    _one_line_error(code, err, "DDRM cannot use operator 'deblur-motion:0.5'", "singulars")


def test_compare_writes_grid_and_table(capsys, tmp_path, small_image, prior_args):
    code, out, err = run(capsys, "compare", "--task", "deblur-motion", "--input", small_image, "--output",
                         tmp_path / "c", "--solvers", "reddiff,dps,ddrm", "--steps", "2", "--json", *prior_args)
    assert code == 0, err
    rep = json.loads(out)
    rows = {r["solver"]: r for r in rep["images"][0]["results"]}
    assert "DDRM cannot use" in rows["ddrm"]["error"]
    for name in ("reddiff", "dps"):
        assert rows[name]["network_evals"] == 2 and rows[name]["seconds"] > 0 and "psnr" in rows[name]
        assert (tmp_path / f"c/coffee/{name}.png").is_file()
    assert (tmp_path / "c/coffee/compare_grid.png").is_file() and (tmp_path / "c/compare.json").is_file()
    code, _, err = run(capsys, "compare", "--task", "sr:2", "--input", small_image, "--output", tmp_path / "d",
                       "--solvers", "reddiff,magic", *prior_args)
    _one_line_error(code, err, "unknown solver(s) magic")


def test_demo_small(capsys, tmp_path, small_image, prior_args):
    code, out, err = run(capsys, "demo", "--input", small_image, "--task", "sr:2", "--task", "inpaint-random:0.5",
                         "--steps", "2", "--output", tmp_path / "demo", "--json", *prior_args)
    assert code == 0, err
    rep = json.loads(out)
    assert [r["task"] for r in rep["results"]] == ["sr:2", "inpaint-random:0.5"]
    assert all(5 < r["psnr"] < 60 for r in rep["results"])
    grid = Image.open(tmp_path / "demo/demo_grid.png")
    assert grid.size[1] > 2 * 32  # one row per task


@pytest.mark.parametrize("task", ["hdr", "jpeg:20", "phase-retrieval", "quantize:4", "cs:0.5",
                                  "sr:2+inpaint-random:0.5"])
@pytest.mark.parametrize("solver", ["reddiff", "dps"])
def test_nonlinear_tasks_through_the_cli(capsys, tmp_path, small_image, prior_args, task, solver):
    code, out, err = run(capsys, "solve", "--task", task, "--input", small_image, "--output", tmp_path / "o",
                         "--solver", solver, "--steps", "2", "--json", *prior_args)
    assert code == 0, err
    res = json.loads(out)
    assert res["psnr"] is not None and np.isfinite(res["psnr"])
    assert json.loads((tmp_path / "o/coffee/run.json").read_text())["task"]["task"].split(":")[0] == task.split(":")[0]


def test_poisson_noise_and_user_operator(capsys, tmp_path, small_image, prior_args):
    code, out, err = run(capsys, "solve", "--task", "denoise", "--noise", "poisson:50", "--input", small_image,
                         "--output", tmp_path / "p", "--steps", "2", "--json", *prior_args)
    assert code == 0, err
    rec = json.loads((tmp_path / "p/coffee/run.json").read_text())
    assert rec["noise"]["noise"].startswith("poisson") and rec["noise"]["peak"] == 50
    code, _, err = run(capsys, "solve", "--task", "denoise", "--noise", "poisson:50", "--sigma-y", "0.1",
                       "--input", small_image, "--output", tmp_path / "q", *prior_args)
    _one_line_error(code, err, "poisson")
    op_file = tmp_path / "myop.py"
    op_file.write_text("import torch\n\ndef half(shape):\n    return lambda x: 0.5 * x[..., ::2, ::2]\n")
    code, out, err = run(capsys, "solve", "--task", f"{op_file}:half", "--input", small_image, "--output",
                         tmp_path / "u", "--steps", "2", "--init", "zeros", "--json", *prior_args)
    assert code == 0, err
    # --init given: no note about the start (two steps of a random network from zeros leave a blank image, which
    # the misfit check reports)
    notes = json.loads((tmp_path / "u/coffee/run.json").read_text())["notes"]
    assert not [n for n in notes if "starts from" in n] and all("blank image" in n for n in notes)
    # without --init: RED-diff chooses the start itself, says so once, and records it
    code, out, err = run(capsys, "solve", "--task", f"{op_file}:half", "--input", small_image, "--output",
                         tmp_path / "w", "--steps", "2", "--json", *prior_args)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "starts from" in line]
    assert len(notes) == 1 and "the measurement resized from 16x16 to the image" in notes[0]
    assert json.loads((tmp_path / "w/coffee/run.json").read_text())["notes"] == [notes[0].split("note: ", 1)[1]]
    code, _, err = run(capsys, "solve", "--task", f"{op_file}:missing", "--input", small_image, "--output",
                       tmp_path / "v", *prior_args)
    _one_line_error(code, err, "missing")


def test_solve_trajectory_gif(capsys, tmp_path, small_image, prior_args):
    """--trajectory K: the estimate every K steps and the final one, as a GIF recorded in run.json."""
    out = tmp_path / "t"
    code, stdout, err = run(capsys, "solve", "--task", "sr:2", "--input", small_image, "--output", out, "--steps", "5",
                            "--trajectory", "2", "--json", *prior_args)
    assert code == 0, err
    gif = out / "coffee" / "trajectory.gif"
    im = Image.open(gif)
    assert im.n_frames == 3  # steps 1, 3 and 5, whose mu is the estimate
    assert im.size == (256, 256)  # 32 px frames enlarged 8x
    im.seek(im.n_frames - 1)
    est = Image.open(out / "coffee" / "estimate.png").convert("RGB").resize((256, 256), Image.Resampling.NEAREST)
    assert np.abs(np.asarray(im.convert("RGB"), dtype=int) - np.asarray(est, dtype=int)).mean() < 6  # 256 colours
    record = json.loads((out / "coffee" / "run.json").read_text())
    assert record["outputs"]["trajectory"] == str(gif)
    code, _, err = run(capsys, "solve", "--task", "sr:2", "--input", small_image, "--output", out, "--trajectory",
                       "0", *prior_args)
    assert code == 2 and "--trajectory" in err
