"""User priors (``--prior file.py:function``): every way to declare one works, every way to break one is one line."""

from __future__ import annotations

import json

import pytest
import torch

from reddiff import RedDiff, load_prior
from reddiff.cli import main
from reddiff.errors import CheckpointError, ReddiffError

GOOD = '''
import torch
from reddiff import DiffusionPrior
from reddiff.schedule import EDMSchedule, FlowSchedule, VPSchedule

def shrink(x, t):  # a "network" that predicts x0 = 0.5 x_t
    return 0.5 * x

def as_dict():
    return {"network": shrink, "prediction": "sample", "schedule": VPSchedule(), "data_range": (-1, 1)}

def as_prior():
    return DiffusionPrior(lambda x, t: 0.1 * x, FlowSchedule(), prediction="flow", data_range=None)

def denoiser():
    def D(x, sigma):
        return x / (1 + sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2)
    D.data_range = (-1, 1)
    return D
'''

BROKEN = '''
import torch
from reddiff.schedule import VPSchedule

def _ok(net):
    return {"network": net, "prediction": "epsilon", "schedule": VPSchedule(), "data_range": (-1, 1)}

def raises():
    raise RuntimeError("no weights here")

def number():
    return 42

def no_range():
    return {"network": lambda x, t: x, "prediction": "epsilon", "schedule": VPSchedule()}

def bad_prediction():
    return {"network": lambda x, t: x, "prediction": "score", "schedule": VPSchedule(), "data_range": None}

def bad_schedule():
    return {"network": lambda x, t: x, "prediction": "epsilon", "schedule": "linear", "data_range": None}

def bare_denoiser():
    return lambda x, sigma: x

def wrong_shape():
    return _ok(lambda x, t: x[..., ::2, ::2])

def nan_output():
    return _ok(lambda x, t: x * float("nan"))

def fails_inside():
    def net(x, t):
        raise ValueError("the GPU caught fire")
    return _ok(net)

def scalar_output():
    return _ok(lambda x, t: x.sum())

def bad_network_time():
    return {**_ok(lambda x, t: x), "network_time": 1000}

def bad_range():
    return {**_ok(lambda x, t: x), "data_range": (0, 1, 2)}

def bad_multiple():
    net = lambda x, t: x  # noqa: E731
    net.size_multiple = "eight"
    return _ok(net)
'''


@pytest.fixture()
def modules(tmp_path):
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "broken.py").write_text(BROKEN)
    (tmp_path / "syntax.py").write_text("def make(:\n")
    return tmp_path


def test_every_declared_kind_of_user_prior_loads_and_solves(modules):
    for name, family, prediction in (("as_dict", "vp", "sample"), ("as_prior", "flow", "flow"),
                                     ("denoiser", "ve", "edm")):
        prior = load_prior(f"{modules / 'good.py'}:{name}")
        assert (prior.schedule.family, prior.prediction, prior.info["route"]) == (family, prediction, "user")
        assert len(prior.info["sha256"]) == 64
        x = torch.zeros(1, 3, 8, 8)
        from reddiff import Problem, make_operator

        op = make_operator("denoise", (3, 8, 8))
        out = RedDiff(steps=3, init="zeros")(prior, Problem(x + 0.1, op, 0.1), 0)
        assert out.shape == x.shape and torch.isfinite(out).all()
    # the x0-predicting "network" 0.5 x_t is exact for data N(0, ...) at every level: eps follows from it
    prior = load_prior(f"{modules / 'good.py'}:as_dict")
    x_t = torch.ones(1, 3, 8, 8)
    eps, x0 = prior.predict(x_t, 999)
    torch.testing.assert_close(x0, 0.5 * x_t * prior.schedule.scale_of(999))


@pytest.mark.parametrize("name, needles", [
    ("raises", ["raises() raised RuntimeError: no weights here"]),
    ("number", ["must return a DiffusionPrior, a dict", "got int"]),
    ("no_range", ["lacks data_range", "None for unbounded"]),
    ("bad_prediction", ["unknown prediction type 'score'"]),
    ("bad_schedule", ["'schedule' must be a reddiff.schedule.NoiseSchedule"]),
    ("bare_denoiser", ["must say its data range"]),
    ("missing", ["has no function 'missing'"]),
    ("bad_network_time", ["network_time must be a function", "got int"]),
    ("bad_range", ["data_range must be two finite numbers"]),
    ("bad_multiple", ["size_multiple must be a positive integer"]),
])
def test_broken_user_priors_are_one_line_at_load(modules, name, needles):
    with pytest.raises(CheckpointError) as err:
        load_prior(f"{modules / 'broken.py'}:{name}")
    assert "\n" not in str(err.value) and "broken.py" in str(err.value)
    for n in needles:
        assert n in str(err.value)


def test_a_module_under_the_home_folder(modules, monkeypatch):
    monkeypatch.setenv("HOME", str(modules))
    prior = load_prior("~/good.py:as_dict")
    assert prior.info["route"] == "user" and len(prior.info["sha256"]) == 64


def test_unloadable_user_modules(modules):
    with pytest.raises(CheckpointError, match="syntax error"):
        load_prior(f"{modules / 'syntax.py'}:make")
    with pytest.raises(CheckpointError, match="not found"):
        load_prior(f"{modules / 'nope.py'}:make")


@pytest.mark.parametrize("name, needles", [
    ("wrong_shape", ["returned [1, 3, 16, 16] for an input [1, 3, 32, 32]", "RED-diff step 1 of 2"]),
    ("nan_output", ["returned NaN or Inf"]),
    ("scalar_output", ["returned [] for an input [1, 3, 32, 32]"]),
    ("fails_inside", ["ValueError: the GPU caught fire", "RED-diff step 1 of 2"]),
])
def test_broken_user_networks_are_one_line_in_a_run(capsys, modules, tmp_path, small_image, name, needles):
    code = main(["solve", "--task", "sr:2", "--input", str(small_image), "--output", str(tmp_path / "o"),
                 "--prior", f"{modules / 'broken.py'}:{name}", "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    assert not (tmp_path / "o").exists()


def test_run_record_names_the_family_prediction_and_schedule(capsys, modules, tmp_path, small_image):
    assert main(["solve", "--task", "sr:2", "--input", str(small_image), "--output", str(tmp_path / "o"),
                 "--prior", f"{modules / 'good.py'}:as_prior", "--steps", "2", "--no-progress"]) == 0
    rec = json.loads((tmp_path / "o/coffee/run.json").read_text())["prior"]
    assert rec["family"] == "flow" and rec["prediction"] == "flow" and rec["schedule"]["family"] == "flow"
    assert rec["route"] == "user" and rec["data_range"] is None


def test_user_priors_take_no_prior_config(modules):
    with pytest.raises(ReddiffError, match="configures itself"):
        load_prior(f"{modules / 'good.py'}:as_dict", config={"a": 1})
