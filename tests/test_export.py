"""ADM priors written as diffusers folders: the converted UNet2DModel computes what the ADM computes, reddiff reads the
folder back as the same prior, and diffusers' own pipeline and scheduler sample from it."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from reddiff import DDIM, Problem, RedDiff, load_prior, make_operator  # noqa: E402
from reddiff.cli import main  # noqa: E402
from reddiff.errors import ReddiffError  # noqa: E402
from reddiff.networks.adm import ADMUNet  # noqa: E402
from reddiff.networks.export import adm_to_unet2d, export_diffusers  # noqa: E402
from reddiff.tools.presets import preset_for_prior  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_adm(**kw) -> ADMUNet:
    """A small ADM with weights far from its (partly zero) initialisation."""
    args = {"image_size": 32, "num_channels": 32, "num_res_blocks": 2, "channel_mult": "1,2,2"} | kw
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ADMUNet(**args)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return net.eval()


CONFIGS = {
    "attention, two legacy heads": {"attention_resolutions": "16,8", "num_heads": 2},
    "new head order, head channels, resblock up/down, learned sigma": {
        "attention_resolutions": "16", "num_head_channels": 32, "use_new_attention_order": True,
        "resblock_updown": True, "learn_sigma": True, "use_scale_shift_norm": True},
    "additive time, conv resampling, top-level attention": {"attention_resolutions": "32", "num_heads": 1},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_converted_unet_computes_what_the_adm_computes(name):
    net = random_adm(**CONFIGS[name])
    unet = adm_to_unet2d(net)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for t in (torch.tensor([3.0, 980.0]), torch.tensor([500.0, 17.5])):  # fractional timesteps too
        with torch.no_grad():
            ours, theirs = net(x, t), unet(x, t).sample
        assert theirs.shape == ours.shape == (2, net.out_channels, 32, 32)
        assert rel(theirs, ours) <= 1e-5, (name, rel(theirs, ours))


def test_the_bundled_prior_round_trips_through_a_diffusers_folder(tmp_path):
    bundled = load_prior("bundled")
    folder = export_diffusers(bundled, tmp_path / "bundled-diffusers")
    assert not list(tmp_path.glob(".*part"))
    assert sorted(p.name for p in (folder / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    back = load_prior(f"diffusers:{folder}", progress=False)
    assert back.prediction == "epsilon" and back.schedule.kind == "linear" and not back.clip_denoised
    # the same network and schedule, so the same presets
    for task, sigma in (("sr:4", 0.0), ("inpaint-random:0.5", 0.05), ("deblur-gauss", 0.1)):
        assert preset_for_prior(back, task, sigma) == preset_for_prior(bundled, task, sigma) != {}
    # diffusers' float32 table of the same betas: equal to float32 rounding
    assert torch.allclose(back.schedule.abar, bundled.schedule.abar, rtol=2e-5, atol=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([40, 700])
    with torch.no_grad():
        assert rel(back.eps(x, t), bundled.eps(x, t)) <= 1e-5
    # the same restoration, up to the schedule's float32 rounding
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    op = make_operator("sr:2", (3, 32, 32))
    problem = Problem(op.A(clean), op, 0.0)
    ours = RedDiff(steps=20)(bundled, problem, torch.Generator().manual_seed(3))
    theirs = RedDiff(steps=20)(back, problem, torch.Generator().manual_seed(3))
    assert rel(theirs, ours) <= 1e-3, rel(theirs, ours)


def test_diffusers_samples_from_the_exported_bundled_prior(tmp_path):
    bundled = load_prior("bundled")
    folder = export_diffusers(bundled, tmp_path / "pipe")
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    images = pipe(batch_size=1, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (1, 64, 64, 3) and images.min() >= 0 and images.max() <= 1 and images.std() > 0.01
    # diffusers' DDIM loop on the exported UNet is reddiff's DDIM on the bundled prior
    sched = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    shape, steps = (1, 3, 32, 32), 8
    ours = DDIM(steps=steps, timestep_spacing="leading").sample(bundled, shape, torch.Generator().manual_seed(5))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        with torch.no_grad():
            x = sched.step(pipe.unet(x, t).sample, t, x).prev_sample
    assert rel(x, ours) <= 1e-4, rel(x, ours)


@pytest.mark.parametrize(("kw", "match"), [
    ({"class_cond": True, "num_classes": 10}, "class-conditional"),
    ({"channel_mult": "0.5,1,2", "num_channels": 64}, "first level"),
    ({"attention_resolutions": "32", "num_heads": 2}, "different widths"),
])
def test_adms_diffusers_cannot_express_are_refused_with_the_reason(kw, match):
    with pytest.raises(ReddiffError, match=match):
        adm_to_unet2d(random_adm(**kw))


def test_the_export_command(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["export", "--prior", "bundled", "--output", str(out)]) == 0
    assert f"diffusers:{out}" in capsys.readouterr().err
    stamp = (out / "unet" / "config.json").stat().st_mtime_ns
    assert main(["export", "--prior", "bundled", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; pass --overwrite" in err
    assert (out / "unet" / "config.json").stat().st_mtime_ns == stamp
    # --overwrite replaces a pipeline folder only
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert main(["export", "--prior", "bundled", "--output", str(tmp_path / "notes"), "--overwrite"]) == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert main(["export", "--prior", "bundled", "--output", str(out), "--overwrite"]) == 0
    assert (out / "unet" / "config.json").stat().st_mtime_ns != stamp and not list(tmp_path.glob(".*"))
    capsys.readouterr()
    # a prior that is not an ADM: one line, nothing written
    assert main(["export", "--prior", f"diffusers:{out}", "--output", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only ADM priors" in err and not (tmp_path / "again").exists()
    assert main(["export", "--prior", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "x").exists()
