"""Task presets: selection by task and noise, file validation, and the CLI applying them under user overrides."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest

from reddiff import ReddiffError
from reddiff.cli import main
from reddiff.tools.presets import load_presets, preset_for, presets_path

PRESETS = {
    "provenance": {"script": "test"},
    "tasks": {
        "sr": [{"max_sigma_y": 0.05, "lam": 0.3, "lr": 0.2, "steps": 4, "weighting": "sqrt"},
               {"max_sigma_y": None, "lam": 0.9, "lr": 0.05, "steps": 5, "weighting": "linear"}],
        "denoise": [{"max_sigma_y": None, "lam": 2.0, "lr": 0.01, "steps": 3}],
    },
}


def test_preset_selection_by_noise_level():
    assert preset_for(PRESETS, "sr:4", 0.02) == {"lam": 0.3, "lr": 0.2, "steps": 4, "weighting": "sqrt"}
    assert preset_for(PRESETS, "sr:2", 0.05)["lam"] == 0.3
    assert preset_for(PRESETS, "sr:4", 0.2)["lam"] == 0.9
    assert preset_for(PRESETS, "denoise", 0.0) == {"lam": 2.0, "lr": 0.01, "steps": 3}
    assert preset_for(PRESETS, "colorize", 0.0) == {}
    assert preset_for(None, "sr:4", 0.0) == {}


def test_composites_combine_their_parts_presets_and_aliases_borrow():
    from reddiff.tools.presets import combine_presets

    # sr at 0.02 (first entry) with denoise: most steps, geometric means of lam and lr; weighting only sr sets
    got = preset_for(PRESETS, "sr:4+denoise", 0.02)
    assert got == {"lam": pytest.approx(math.sqrt(0.3 * 2.0), rel=1e-3), "lr": pytest.approx(math.sqrt(0.2 * 0.01),
                                                                                            rel=1e-3), "steps": 4}
    assert preset_for(PRESETS, "denoise+sr:2", 0.2)["lam"] == pytest.approx(math.sqrt(0.9 * 2.0), rel=1e-3)
    assert preset_for(PRESETS, "sr:4+colorize", 0.0) == {}  # a part without a preset: none
    own = {"tasks": {**PRESETS["tasks"], "sr+denoise": [{"max_sigma_y": None, "lam": 7.0, "steps": 9}]}}
    assert preset_for(own, "sr:2+denoise", 0.0) == {"lam": 7.0, "steps": 9}  # its own presets win
    assert combine_presets([{"init": "classical", "t_max": 50, "weighting": "const"},
                            {"init": "pinv", "t_max": 200, "weighting": "linear"}]) == \
        {"init": "pinv", "t_max": 200, "weighting": "const"}
    assert combine_presets([{"t_max": 50}, {"t_max": None}]) == {"t_max": None}  # None: every timestep
    freeform = {"tasks": {"inpaint-freeform": [{"max_sigma_y": None, "lam": 0.5}]}}
    assert preset_for(freeform, "inpaint-mask", 0.0) == {"lam": 0.5}


def test_presets_file_beside_weights(tmp_path):
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"")
    assert presets_path(w).name == "model.presets.json"
    assert load_presets(w) is None
    presets_path(w).write_text(json.dumps(PRESETS))
    assert load_presets(w)["tasks"]["sr"][1]["lam"] == 0.9
    presets_path(w).write_text(json.dumps({"tasks": {"sr": [{"lam": 1, "magic": 2}]}}))
    with pytest.raises(ReddiffError, match="malformed presets.*magic"):
        load_presets(w)


@pytest.fixture()
def prior_with_presets(tmp_path, adm_fixtures):
    w = tmp_path / "tiny.pt"
    shutil.copy(adm_fixtures / "tiny_a.pt", w)
    presets_path(w).write_text(json.dumps(PRESETS))
    return w


def test_cli_applies_presets_and_user_overrides(capsys, tmp_path, small_image, prior_with_presets):
    base = ["solve", "--task", "sr:4", "--input", str(small_image), "--prior", str(prior_with_presets),
            "--no-progress", "--sigma-y", "0.01"]
    assert main([*base, "--output", str(tmp_path / "a")]) == 0
    rec = json.loads((tmp_path / "a/coffee/run.json").read_text())
    assert rec["solver"]["lam"] == 0.3 and rec["solver"]["steps"] == 4 and rec["solver"]["weighting"] == "sqrt"
    assert rec["preset"]["lr"] == 0.2 and rec["network_evals"] == 4
    assert main([*base, "--output", str(tmp_path / "b"), "--lam", "0.7", "--steps", "2"]) == 0
    rec = json.loads((tmp_path / "b/coffee/run.json").read_text())
    assert rec["solver"]["lam"] == 0.7 and rec["solver"]["steps"] == 2 and rec["solver"]["lr"] == 0.2
    # a noisier measurement selects the second preset (0.05 in 0..1 units is 0.1 inside, above the 0.05 bound)
    assert main([*base[:-1], "0.05", "--output", str(tmp_path / "c")]) == 0
    rec = json.loads((tmp_path / "c/coffee/run.json").read_text())
    assert rec["solver"]["lam"] == 0.9 and rec["solver"]["steps"] == 5
    capsys.readouterr()


def test_bundled_prior_ships_with_presets_for_the_main_tasks(capsys):
    from reddiff import load_prior
    from reddiff.networks.hub import bundled_weights
    from reddiff.solvers.reddiff import RedDiff

    prior = load_prior("bundled", progress=False)
    assert prior.info["name"] == "bundled" and not prior.learned_sigma
    assert sum(p.numel() for p in prior.network.parameters()) < 25e6 / 4  # weights <= 25 MB in float32
    assert bundled_weights().stat().st_size <= 25 * 2**20
    presets = load_presets(bundled_weights())
    assert presets["provenance"]["script"] == "benchmarks/sweep_presets.py"
    # the shipped presets were swept with the shipped weights (re-sweep after retraining)
    assert presets["provenance"]["prior_sha256"] == hashlib.sha256(bundled_weights().read_bytes()).hexdigest()
    for task in ("sr:4", "inpaint-random:0.8", "deblur-gauss", "denoise"):
        chosen = preset_for(presets, task, 0.02)
        assert chosen and RedDiff(**chosen).steps == chosen["steps"]  # every preset is a valid solver
    assert main(["list", "priors"]) == 0
    out = capsys.readouterr().out
    assert "bundled" in out and "preset sr" in out
    # every setting of a preset is shown (t_max, init and the schedule matter as much as lam and lr)
    lines = [ln for ln in out.splitlines() if "preset sr " in ln]
    assert any(all(f"{k} {v}" in line for k, v in preset_for(presets, "sr:4", 0.02).items()) for line in lines)
    assert len(lines) == len(presets["tasks"]["sr"])  # one line per noise band
    # bands shown in --sigma-y's 0..1 units (stored in [-1, 1]); the last one holds above the one before
    first, before = presets["tasks"]["sr"][0]["max_sigma_y"], presets["tasks"]["sr"][-2]["max_sigma_y"]
    assert f"sigma_y <= {first / 2:.3g} " in lines[0] and f"sigma_y > {before / 2:.3g} " in lines[-1]


def test_every_builtin_task_has_a_bundled_preset(capsys):
    """The bundled prior has a preset (at most 100 steps, a valid solver) for every registered task, recorded with
    the sweep that chose it; `reddiff list priors` shows one line per task. A new task fails here until swept."""
    from reddiff.networks.hub import bundled_weights
    from reddiff.operators.registry import task_specs
    from reddiff.solvers.reddiff import RedDiff
    from reddiff.tools.presets import PRESET_ALIASES

    presets = load_presets(bundled_weights())
    missing = [name for name in task_specs() if not preset_for(presets, name, 0.02)]
    assert not missing, f"tasks without a bundled preset: {missing}; sweep them with benchmarks/sweep_presets.py"
    for name in task_specs():
        chosen = preset_for(presets, name, 0.02)
        assert chosen["steps"] <= 100 and RedDiff(**chosen).lam == chosen["lam"], name
    swept = {task.split(":")[0] for task in presets["provenance"]["candidates"]}
    assert set(presets["tasks"]) <= swept  # every preset has its sweep's candidates and crops on record
    assert set(presets["provenance"]["crops"]) == set(presets["provenance"]["candidates"])
    assert main(["list", "priors"]) == 0
    out = capsys.readouterr().out
    bundled = out.split("  bundled", 1)[1].split("\n  imagenet", 1)[0]
    for name in task_specs():
        assert f"preset {name} " in bundled, name
    assert all(f"as {target}" in bundled for target in PRESET_ALIASES.values())


def test_bundled_noise_bands_are_the_ones_measured():
    """The bundled prior's noise bands are exactly those `benchmarks/noise_aware.py` chose (its results file), ordered
    by their bound, and each noise level picks the band its sweep chose for it."""
    from reddiff.networks.hub import bundled_weights

    presets = load_presets(bundled_weights())
    results = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/noise_aware.json").read_text())
    assert presets["provenance"]["noise_aware"]["prior_sha256"] == results["provenance"]["prior_sha256"]
    assert results["bands"], "no bands in the results"
    for family, bands in results["bands"].items():
        assert presets["tasks"][family] == bands, family
        bounds = [b["max_sigma_y"] for b in bands]
        assert bounds[-1] is None and bounds[:-1] == sorted(bounds[:-1]), family
    for row in results["heldout"]:  # sigma_y in 0..1 units there, [-1, 1] for preset_for
        assert preset_for(presets, row["task"], 2 * row["sigma_y"])["lam"] == row["lam_aware"], row


def test_bundled_learning_rates_re_chosen_by_steps_are_the_ones_measured():
    """Where `benchmarks/preset_lr.py` re-chose a task's lr (at 50 and 100 steps), every band of the shipped preset
    carries the pick, and the pick is the best measured factor or one nearer 1 within the margin."""
    from reddiff.networks.hub import bundled_weights

    presets = load_presets(bundled_weights())
    results = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/preset_lr.json").read_text())
    assert presets["provenance"]["lr"]["picks"] == results["provenance"]["picks"]
    for task, pick in results["provenance"]["picks"].items():
        assert {e["lr"] for e in presets["tasks"][task.split(":")[0]]} == {pick["lr"]}, task
        total = {}
        for r in results["rows"]:
            if r["task"] == task:
                total[r["factor"]] = total.get(r["factor"], 0.0) + r["psnr"]
        assert total[pick["factor"]] >= max(total.values()) - 0.1, task


def test_demo_with_the_bundled_prior_on_a_small_image(capsys, tmp_path, small_image):
    code = main(["demo", "--input", str(small_image), "--steps", "3", "--output", str(tmp_path / "d"), "--json",
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rep = json.loads(out)
    assert [r["task"] for r in rep["results"]] == ["sr:4", "inpaint-random:0.8", "deblur-gauss:3.0"]
    for r in rep["results"]:
        assert r["preset"] and r["solver"]["steps"] == 3 and r["solver"]["lam"] == r["preset"]["lam"]
    assert (tmp_path / "d/demo_grid.png").is_file() and (tmp_path / "d/demo.json").is_file()
