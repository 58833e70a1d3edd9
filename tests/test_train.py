"""Training: loss decreases on tiny crops, resume continues the same run, export loads back as a prior."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from reddiff import ReddiffError, load_prior
from reddiff.cli import main
from reddiff.errors import Interrupted
from reddiff.networks.adm import create_model
from reddiff.schedule import VPSchedule
from reddiff.tools.data import HELD_OUT, TRAIN_SKIMAGE, CropSampler, dead_leaves
from reddiff.tools.train import TrainConfig, draw_timesteps, learning_rate, train

TINY = {"image_size": 16, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2", "attention_resolutions": "",
        "learn_sigma": False, "use_scale_shift_norm": True, "resblock_updown": True}


def _images(d):
    from skimage import data

    d.mkdir()
    Image.fromarray(data.camera()[::8, ::8]).save(d / "camera.png")
    Image.fromarray(data.rocket()[::8, ::8]).save(d / "rocket.png")
    return d


@pytest.fixture()
def folder(tmp_path):
    return _images(tmp_path / "imgs")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoint_every changes when it saves, not what it computes)."""
    d = tmp_path_factory.mktemp("straight")
    train(_cfg(d, _images(d / "imgs")), progress=False)
    return d


def _cfg(tmp_path, folder, **kw):
    base = dict(out=str(tmp_path / "run"), data=str(folder), steps=6, batch_size=4, crop=16, lr=2e-3, warmup=0,
                checkpoint_every=3, seed=3, model=dict(TINY))
    base.update(kw)
    return TrainConfig(**base)


def _fixed_loss(model) -> float:
    g = torch.Generator().manual_seed(0)
    x0 = CropSampler([dead_leaves(32, np.random.default_rng(0))], 16, seed=1).sample(16)
    t = torch.randint(0, 1000, (16,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = VPSchedule().abar[t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        return float((model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t) - eps).pow(2).mean())


def test_a_few_steps_decrease_the_loss(tmp_path, folder):
    cfg = _cfg(tmp_path, folder, steps=40, lr=3e-3)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        init = create_model(**cfg.model)
    before = _fixed_loss(init)
    train(cfg, progress=False)
    state = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)
    init.load_state_dict(state["model"])
    after = _fixed_loss(init)
    assert before == pytest.approx(1.0, abs=0.1)  # zero-initialised output layer: eps_hat = 0 at first
    assert after < 0.7 * before, (before, after)


def test_deterministic_and_resume_continues_the_same_run(tmp_path, folder):
    full = train(_cfg(tmp_path / "a", folder, steps=6), progress=False)
    train(_cfg(tmp_path / "b", folder, steps=3), progress=False)
    resumed = train(_cfg(tmp_path / "b", folder, steps=6), resume=True, progress=False)
    train(_cfg(tmp_path / "c", folder, steps=6), progress=False)
    sa = torch.load(tmp_path / "a/run/checkpoint.pt", weights_only=True)
    sb = torch.load(tmp_path / "b/run/checkpoint.pt", weights_only=True)
    sc = torch.load(tmp_path / "c/run/checkpoint.pt", weights_only=True)
    for key in ("model", "ema"):
        for k in sa[key]:
            assert torch.equal(sa[key][k], sb[key][k]), (key, k)
            assert torch.equal(sa[key][k], sc[key][k]), (key, k)
    assert torch.equal(sa["history_loss"], sb["history_loss"])
    assert full["steps"] == resumed["steps"] == 6


def test_export_loads_back_as_a_prior(tmp_path, folder):
    summary = train(_cfg(tmp_path, folder), progress=False)
    prior = load_prior(summary["export"])
    state = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)
    net = create_model(**TINY)
    net.load_state_dict(state["ema"])
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        assert torch.allclose(prior.eps(x, 500), net(x, torch.tensor([500, 500])), atol=1e-6)
    assert (tmp_path / "run/loss.png").is_file()
    rec = json.loads((tmp_path / "run/train.json").read_text())
    assert rec["steps"] == 6 and rec["config"]["model"]["num_channels"] == 32


def test_resume_guards(tmp_path, folder):
    train(_cfg(tmp_path, folder, steps=3), progress=False)
    with pytest.raises(ReddiffError, match="--resume"):
        train(_cfg(tmp_path, folder, steps=3), progress=False)
    with pytest.raises(ReddiffError, match="different crop"):
        train(_cfg(tmp_path, folder, steps=6, crop=8), resume=True, progress=False)
    with pytest.raises(ReddiffError, match="nothing to resume"):
        train(_cfg(tmp_path / "new", folder), resume=True, progress=False)


def test_training_set_excludes_held_out_images():
    assert not set(HELD_OUT) & set(TRAIN_SKIMAGE)
    from reddiff.tools.data import builtin_training_images

    names = [n for n, _ in builtin_training_images()]
    assert len(names) == 18 and "stereo_motorcycle_right" in names and "china" in names
    assert not any(h in n for n in names for h in HELD_OUT)


def test_crop_sampler_is_reproducible_and_augments():
    img = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    a = CropSampler([img], 16, seed=5)
    b = CropSampler([img], 16, seed=5)
    xa = a.sample(8)
    assert torch.equal(xa, b.sample(8))
    assert xa.shape == (8, 3, 16, 16) and xa.min() >= -1 and xa.max() <= 1
    state = a.state_dict()
    nxt = a.sample(2)
    a.load_state_dict(state)
    assert torch.equal(a.sample(2), nxt)
    with pytest.raises(ReddiffError, match="smaller than the 64px crop"):
        CropSampler([img], 64)


def test_dead_leaves_covers_the_image():
    im = dead_leaves(64, np.random.default_rng(0))
    assert im.shape == (64, 64, 3) and im.dtype == np.uint8
    assert len(np.unique(im.reshape(-1, 3), axis=0)) > 20


def test_low_noise_timestep_emphasis(tmp_path, folder):
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([draw_timesteps(16, 1000, 0.5, 200, g) for _ in range(400)])
    assert draws.min() >= 0 and draws.max() < 1000
    assert draws[:, :8].max() < 200  # the low-noise half
    assert abs(float((draws[:, 8:] < 200).float().mean()) - 0.2) < 0.03  # the rest stays uniform
    assert torch.equal(draw_timesteps(16, 1000, 0.0, 200, torch.Generator().manual_seed(5)),
                       torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ReddiffError, match="low_t must be a fraction"):
        _cfg(tmp_path, folder, low_t=1.5).validate()
    with pytest.raises(ReddiffError, match="low_t_max must be in"):
        _cfg(tmp_path, folder, low_t_max=0).validate()
    # a low-noise fine-tuning phase may follow a uniform one in the same run
    train(_cfg(tmp_path, folder, steps=3), progress=False)
    summary = train(_cfg(tmp_path, folder, steps=5, low_t=0.5, low_t_max=50), resume=True, progress=False)
    assert summary["steps"] == 5 and summary["config"]["low_t"] == 0.5


def test_learning_rate_warmup_and_cooldown(tmp_path, folder):
    cfg = _cfg(tmp_path, folder, steps=100, lr=1.0, warmup=10, cooldown=20)
    rates = [learning_rate(cfg, s) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == 1.0 and rates[79] == 1.0
    assert rates[80] == pytest.approx(20 / 21) and rates[99] == pytest.approx(1 / 21)
    assert all(a > b for a, b in zip(rates[80:], rates[81:]))
    assert [learning_rate(_cfg(tmp_path, folder, steps=100, lr=1.0, warmup=0), s) for s in (0, 99)] == [1.0, 1.0]
    with pytest.raises(ReddiffError, match="cooldown must be between 0 and steps"):
        _cfg(tmp_path, folder, steps=10, cooldown=11).validate()


def test_cli_train_bad_input_and_run(tmp_path, folder, capsys):
    code = main(["train", "--output", str(tmp_path / "t"), "--data", str(folder), "--steps", "2", "--batch-size", "2",
                 "--crop", "16", "--channel-mult", "1,2", "--no-progress", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["steps"] == 2
    code = main(["train", "--output", str(tmp_path / "u"), "--data", str(tmp_path / "nope"), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1
    code = main(["train", "--output", str(tmp_path / "t"), "--steps", "0"])
    assert code == 2


@pytest.mark.parametrize(("change", "match"), [
    ({"crop": 7}, "crop must be a multiple of 2 for this network, got 7"),
    ({"model": dict(TINY, learn_sigma=True)}, "predicts 6 channels.*learn_sigma must be false"),
    ({"model": dict(TINY, channel_mult="1,x")}, "bad model settings"),
    ({"deadleaves": 0.5, "deadleaves_images": 0}, "deadleaves_images must be >= 1"),
    ({"grad_clip": float("nan")}, "grad_clip must be > 0"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"data": "no-such-folder"}, "no-such-folder"),
])
def test_bad_settings_leave_nothing_on_disk(tmp_path, folder, change, match):
    out = tmp_path / "new" / "run"
    with pytest.raises(ReddiffError, match=match):
        train(_cfg(tmp_path, folder, **change, out=str(out)), progress=False)
    assert not (tmp_path / "new").exists()


def test_output_inside_a_file_is_refused(tmp_path, folder):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReddiffError, match="is not a writable folder"):
        train(_cfg(tmp_path, folder, out=str(tmp_path / "file" / "run")), progress=False)


def test_cli_crop_the_network_cannot_take(tmp_path, capsys):
    code = main(["train", "--output", str(tmp_path / "t"), "--crop", "7", "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "crop must be a multiple of 8" in err
    assert not (tmp_path / "t").exists()


def test_time_estimate_line():
    from reddiff.tools.train.estimate import estimate_line

    threads = torch.get_num_threads()
    assert estimate_line(0.84, 20000, torch.device("cpu")) == (
        f"train: 0.84 s/step on cpu ({threads} threads): 20,000 steps take about 4.7 h; "
        "use a CUDA GPU (--device cuda) for long runs")
    gpu = estimate_line(0.05, 20000, torch.device("cuda"))
    assert gpu == "train: 0.05 s/step on cuda: 20,000 steps take about 17 min"  # no hint on the GPU
    resumed = estimate_line(30.0, 10000, torch.device("cuda:1"), resumed=True)
    assert resumed.endswith("10,000 more steps take about 3.5 days")


def test_time_estimate_is_said_once_for_long_runs_only(tmp_path, folder, monkeypatch):
    import reddiff.tools.train.estimate as loop

    said: list[str] = []
    train(_cfg(tmp_path / "short", folder, steps=3), progress=False, say=said.append)
    assert said == []  # under ESTIMATE_MIN_STEPS steps: nothing to say
    monkeypatch.setattr(loop, "ESTIMATE_MIN_STEPS", 5)
    monkeypatch.setattr(loop, "ESTIMATE_STEPS", 2)
    monkeypatch.setattr(loop, "ESTIMATE_MIN_SECONDS", 0.0)
    train(_cfg(tmp_path / "long", folder, steps=5), progress=False, say=said.append)
    assert len(said) == 1, said
    assert re.fullmatch(r"train: [0-9.e-]+ s/step on cpu \(\d+ threads\): 5 steps take about 1 min; "
                        r"use a CUDA GPU \(--device cuda\) for long runs", said[0]), said
    monkeypatch.setattr(loop, "ESTIMATE_MIN_SECONDS", 1e9)
    train(_cfg(tmp_path / "quick", folder, steps=5), progress=False, say=said.append)
    assert len(said) == 1  # less than ESTIMATE_MIN_SECONDS left: nothing more said


def _same_run(a, b) -> None:  # the checkpoints in a/run and b/run
    sa, sb = (torch.load(p / "run/checkpoint.pt", weights_only=True) for p in (a, b))
    for key in ("model", "ema"):
        for k in sa[key]:
            assert torch.equal(sa[key][k], sb[key][k]), (key, k)
    assert torch.equal(sa["history_loss"], sb["history_loss"]) and sa["step"] == sb["step"]


def _ctrl_c_at_call(monkeypatch, owner, name, n) -> None:
    """Ctrl-C in the middle of a step: the n-th call of ``owner.name`` raises KeyboardInterrupt."""
    original, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_ctrl_c_saves_the_steps_done_and_resume_finishes_the_same_run(tmp_path, folder, straight):

    def stop_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    cfg = _cfg(tmp_path / "stopped", folder, checkpoint_every=4)
    with pytest.raises(Interrupted) as info:
        train(cfg, progress=False, on_step=stop_at_3)
    ckpt = tmp_path / "stopped/run/checkpoint.pt"
    assert info.value.message == (f"training stopped at step 3 of 6; checkpoint saved to {ckpt}: "
                                  "rerun with --resume to continue")
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint.pt"]
    assert train(cfg, resume=True, progress=False)["steps"] == 6
    _same_run(straight, tmp_path / "stopped")


def test_ctrl_c_inside_a_step_rewinds_it(tmp_path, folder, monkeypatch, straight):
    import reddiff.tools.train.loop as loop

    _ctrl_c_at_call(monkeypatch, loop, "draw_timesteps", 4)  # step 4, after its crops were drawn
    cfg = _cfg(tmp_path / "stopped", folder, checkpoint_every=2)
    with pytest.raises(Interrupted, match="training stopped at step 3 of 6; checkpoint saved"):
        train(cfg, progress=False)
    train(cfg, resume=True, progress=False)
    _same_run(straight, tmp_path / "stopped")


def test_ctrl_c_while_the_weights_change_keeps_the_last_checkpoint(tmp_path, folder, monkeypatch, straight):
    _ctrl_c_at_call(monkeypatch, torch.optim.AdamW, "step", 4)
    cfg = _cfg(tmp_path / "stopped", folder, checkpoint_every=2)
    with pytest.raises(Interrupted, match="stopped during step 4 of 6 as the weights changed; the checkpoint at step "
                                          "2 in .* is kept: rerun with --resume to continue from there"):
        train(cfg, progress=False)
    train(cfg, resume=True, progress=False)
    _same_run(straight, tmp_path / "stopped")


def test_ctrl_c_before_the_first_step_leaves_nothing(tmp_path, folder, monkeypatch):
    import reddiff.tools.train.loop as loop

    _ctrl_c_at_call(monkeypatch, loop, "draw_timesteps", 1)
    with pytest.raises(Interrupted) as info:
        train(_cfg(tmp_path, folder, out=str(tmp_path / "new" / "run")), progress=False)
    assert info.value.message == "stopped before the first step; nothing was saved"
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    _ctrl_c_at_call(monkeypatch, loop, "draw_timesteps", 1)
    with pytest.raises(Interrupted, match="nothing was saved"):
        train(_cfg(tmp_path, folder, out=str(tmp_path / "mine")), progress=False)
    assert (tmp_path / "mine").is_dir()


def test_ctrl_c_before_a_resumed_step_keeps_the_checkpoint(tmp_path, folder, monkeypatch):
    import reddiff.tools.train.loop as loop

    train(_cfg(tmp_path, folder, steps=3), progress=False)
    ckpt = tmp_path / "run/checkpoint.pt"
    before = ckpt.read_bytes()
    _ctrl_c_at_call(monkeypatch, loop, "draw_timesteps", 1)
    with pytest.raises(Interrupted) as info:
        train(_cfg(tmp_path, folder, steps=6), resume=True, progress=False)
    assert info.value.message == (f"stopped before a new step; the checkpoint at step 3 in {ckpt} is unchanged: "
                                  "rerun with --resume to continue")
    assert ckpt.read_bytes() == before


def test_divergence_before_the_first_checkpoint_leaves_nothing(tmp_path, folder):
    with pytest.raises(ReddiffError, match="training diverged"):
        train(_cfg(tmp_path, folder, lr=1e30, out=str(tmp_path / "new" / "run")), progress=False)
    assert not (tmp_path / "new").exists()
