"""diffusers priors: a small random UNet2DModel saved as diffusers writes it, loaded back through
``diffusers:FOLDER``, and sampled by reddiff's DDIM equal to diffusers' own scheduler loops."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from reddiff import DDIM, Problem, RedDiff, load_prior, make_operator  # noqa: E402
from reddiff.errors import CheckpointError  # noqa: E402

SIZE = 16


def tiny_unet(out_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DModel(
            sample_size=SIZE, in_channels=3, out_channels=out_channels, layers_per_block=1,
            block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8,
        )
    # random weights are mostly near the initialisation; perturb them so the network is far from identity
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def save_pipeline(folder: Path, scheduler, out_channels: int = 3) -> Path:
    diffusers.DDPMPipeline(unet=tiny_unet(out_channels), scheduler=scheduler).save_pretrained(folder)
    return folder


def diffusers_loop(unet, scheduler, steps: int, x: torch.Tensor, generator=None, channels: int = 3) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        with torch.no_grad():
            out = unet(x, t).sample[:, :channels]
        kwargs = {"generator": generator} if generator is not None else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


PREDICTIONS = ["epsilon", "sample", "v_prediction"]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_ddim_equals_diffusers_ddim_scheduler(tmp_path, prediction, beta_schedule):
    sched = diffusers.DDIMScheduler(beta_schedule=beta_schedule, prediction_type=prediction, clip_sample=False)
    folder = save_pipeline(tmp_path / "pipe", sched)
    prior = load_prior(f"diffusers:{folder}", progress=False)
    assert prior.prediction == prediction and prior.info["route"] == "diffusers"
    steps, shape = 10, (2, 3, SIZE, SIZE)
    ours = DDIM(steps=steps, timestep_spacing="leading").sample(prior, shape, torch.Generator().manual_seed(0))
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # noqa: N806
    theirs = diffusers_loop(diffusers.UNet2DModel.from_pretrained(folder / "unet"), sched, steps, x_T)
    assert rel(ours, theirs) <= 1e-5, rel(ours, theirs)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("clip", [False, True])
def test_eta_one_equals_diffusers_ddpm_scheduler_with_the_same_noise(tmp_path, prediction, clip):
    sched = diffusers.DDPMScheduler(prediction_type=prediction, clip_sample=clip, variance_type="fixed_small")
    folder = save_pipeline(tmp_path / "pipe", sched)
    prior = load_prior(f"diffusers:{folder}", progress=False)
    assert prior.clip_denoised is clip
    steps, shape = 10, (1, 3, SIZE, SIZE)
    ours = DDIM(steps=steps, eta=1.0, timestep_spacing="leading").sample(prior, shape, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(shape, generator=g)  # noqa: N806
    theirs = diffusers_loop(diffusers.UNet2DModel.from_pretrained(folder / "unet"), sched, steps, x_T, generator=g)
    assert rel(ours, theirs) <= 1e-5, rel(ours, theirs)


def test_learned_variance_channels_and_scaled_linear_betas(tmp_path):
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    num_train_timesteps=500, clip_sample=False)
    config = dict(sched.config)
    folder = save_pipeline(tmp_path / "pipe", sched, out_channels=6)
    sched_file = folder / "scheduler" / "scheduler_config.json"
    saved = json.loads(sched_file.read_text())
    saved["variance_type"] = "learned_range"  # what DDPM-trained checkpoints with learned variances carry
    sched_file.write_text(json.dumps(saved))
    prior = load_prior(f"diffusers:{folder}", progress=False)
    assert prior.learned_sigma and prior.schedule.num_timesteps == 500 and prior.schedule.kind == "scaled_linear"
    # the very table diffusers trains and samples with
    assert torch.equal(prior.schedule.abar.float(), diffusers.DDIMScheduler.from_config(config).alphas_cumprod)
    ours = DDIM(steps=5, timestep_spacing="leading").sample(prior, (1, 3, SIZE, SIZE), torch.Generator().manual_seed(1))
    x_T = torch.randn((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))  # noqa: N806
    theirs = diffusers_loop(diffusers.UNet2DModel.from_pretrained(folder / "unet"),
                            diffusers.DDIMScheduler.from_config(config), 5, x_T)
    assert rel(ours, theirs) <= 1e-5


def test_reddiff_runs_on_a_diffusers_prior_and_any_image_size(tmp_path):
    folder = save_pipeline(tmp_path / "pipe", diffusers.DDIMScheduler(prediction_type="v_prediction"))
    prior = load_prior(f"diffusers:{folder}", progress=False)
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1  # not a multiple of 2: padded
    op = make_operator("inpaint-random:0.5", (3, 20, 24), generator=torch.Generator().manual_seed(0))
    mu = RedDiff(steps=5)(prior, Problem(op.A(x), op, 0.0), torch.Generator().manual_seed(2))
    assert mu.shape == x.shape and torch.isfinite(mu).all()


def test_a_bare_model_folder_with_its_scheduler_config(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "model")
    with pytest.raises(CheckpointError, match="no scheduler config") as err:
        load_prior(f"diffusers:{tmp_path / 'model'}", progress=False)
    assert "\n" not in str(err.value)
    diffusers.DDIMScheduler().save_pretrained(tmp_path / "model")
    prior = load_prior(f"diffusers:{tmp_path / 'model'}", progress=False)
    assert prior.prediction == "epsilon" and prior.schedule.family == "vp"


def test_flow_matching_scheduler_gives_a_rectified_flow_prior(tmp_path):
    folder = save_pipeline(tmp_path / "pipe", diffusers.FlowMatchEulerDiscreteScheduler())
    prior = load_prior(f"diffusers:{folder}", progress=False)
    assert prior.schedule.family == "flow" and prior.prediction == "flow"
    # the network sees t * 1000, as diffusers' flow schedulers feed it
    seen = []
    unet = prior.network.unet
    handle = unet.register_forward_pre_hook(lambda m, args: seen.append(float(args[1].reshape(-1)[0])))
    prior.eps(torch.zeros(1, 3, SIZE, SIZE), 0.25)
    handle.remove()
    assert seen == [250.0]


def test_bad_diffusers_folders_are_one_line(tmp_path):
    cases = []
    with pytest.raises(CheckpointError) as err:
        load_prior(f"diffusers:{tmp_path / 'nope'}", progress=False)
    cases.append(err)
    folder = save_pipeline(tmp_path / "pipe", diffusers.DDIMScheduler())
    for f in (folder / "unet").glob("*.safetensors"):
        torch.save({"x": torch.zeros(1)}, f.with_suffix(".bin"))
        f.unlink()
    with pytest.raises(CheckpointError, match="only pickled weights") as err:
        load_prior(f"diffusers:{folder}", progress=False)
    cases.append(err)
    folder2 = save_pipeline(tmp_path / "pipe2", diffusers.DDIMScheduler(rescale_betas_zero_snr=True))
    with pytest.raises(CheckpointError, match="rescale_betas_zero_snr") as err:
        load_prior(f"diffusers:{folder2}", progress=False)
    cases.append(err)
    # scheduler configs that would load silently wrong, or that diffusers itself rejects with a traceback
    sched_file = folder2 / "scheduler" / "scheduler_config.json"
    good = {**json.loads(sched_file.read_text()), "rescale_betas_zero_snr": False}
    for change, needle in (
        ({"thresholding": True}, "thresholding"),
        ({"clip_sample": True, "clip_sample_range": 2.0}, "clip_sample_range 2"),
        ({"trained_betas": [0.5] * 999 + [1.0]}, "strictly between 0 and 1"),
        ({"trained_betas": [0.01] * 10}, "must be 1000 numbers"),
        ({"trained_betas": ["a"]}, "malformed"),
        ({"num_train_timesteps": "x"}, "malformed"),
        ({"beta_schedule": "laplace"}, "beta_schedule 'laplace' is not supported"),
        ({"_class_name": "__version__"}, "scheduler __version__ is not supported"),
    ):
        sched_file.write_text(json.dumps({**good, **change}))
        with pytest.raises(CheckpointError, match=needle) as err:
            load_prior(f"diffusers:{folder2}", progress=False)
        cases.append(err)
    for text in ("{not json", "[1, 2]"):
        sched_file.write_text(text)
        with pytest.raises(CheckpointError, match="scheduler_config.json") as err:
            load_prior(f"diffusers:{folder2}", progress=False)
        cases.append(err)
    assert all("\n" not in str(e.value) for e in cases)


def test_euler_continuous_timesteps_feed_the_network_its_log_sigma(tmp_path):
    """diffusers' EulerDiscreteScheduler(timestep_type="continuous") gives a v-prediction network 0.25 log(sigma_t)."""
    sched = diffusers.EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous")
    folder = save_pipeline(tmp_path / "pipe", sched)
    prior = load_prior(f"diffusers:{folder}", progress=False)
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet")
    x_t = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([30, 800])
    abar = prior.schedule.abar[t].reshape(-1, 1, 1, 1)
    sigma = ((1 - abar) / abar).sqrt()
    with torch.no_grad():
        v = unet(x_t, (0.25 * sigma.log()).reshape(-1).float()).sample.double()
        eps = abar.sqrt() * v + (1 - abar).sqrt() * x_t.double()  # v = sqrt(abar) eps - sqrt(1 - abar) x0
        ours = prior.eps(x_t, t)
    assert rel(ours.double(), eps) <= 1e-5


def test_hub_ids_come_from_the_cache_offline_and_name_it_when_missing(tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache; offline, a model that is not there is one line naming it."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import importlib

    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=f"not available: offline .*{cache}") as err:
        load_prior("diffusers:someone/tiny-ddpm", progress=False)
    assert "\n" not in str(err.value)
    # the cache layout huggingface_hub writes: refs/main -> snapshots/<commit>/<files>
    repo = cache / "models--someone--tiny-ddpm"
    snapshot = repo / "snapshots" / ("0" * 40)
    save_pipeline(snapshot, diffusers.DDIMScheduler(prediction_type="sample"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    importlib.invalidate_caches()
    prior = load_prior("diffusers:someone/tiny-ddpm", progress=False)
    assert prior.prediction == "sample" and Path(prior.info["path"]) == snapshot
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def _hub_server(root: Path, repo: str, log: list[tuple[str, str]]):
    """A loopback stand-in for the Hugging Face hub serving the files under ``root`` as model ``repo``: the three
    endpoints ``snapshot_download`` uses (revision info, file tree, resolve with the metadata headers)."""
    import hashlib
    import http.server
    import threading

    commit = "c" * 40
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _reply(self, body: bytes, headers: dict[str, str], send_body: bool) -> None:
            self.send_response(200)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _serve(self, send_body: bool) -> None:
            path = self.path.split("?")[0]
            log.append((self.command, path))
            if path.startswith(f"/api/models/{repo}/revision/"):
                info = {"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in sorted(files)]}
                return self._reply(json.dumps(info).encode(), {"Content-Type": "application/json"}, send_body)
            if path.startswith(f"/api/models/{repo}/tree/"):
                tree = [{"type": "file", "path": f, "size": p.stat().st_size,
                         "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for f, p in sorted(files.items())]
                return self._reply(json.dumps(tree).encode(), {"Content-Type": "application/json"}, send_body)
            prefix = f"/{repo}/resolve/{commit}/"
            if path.startswith(prefix) and path[len(prefix):] in files:
                data = files[path[len(prefix):]].read_bytes()
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                return self._reply(data, {"X-Repo-Commit": commit, "ETag": etag}, send_body)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            self._serve(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(False)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


def test_hub_ids_download_into_the_cache_from_hf_endpoint(tmp_path):
    """Online, a hub id is downloaded through huggingface_hub (here from a loopback server named by HF_ENDPOINT, as a
    mirror would be) into its cache, safetensors and configs only; then it loads offline from that cache."""
    import subprocess
    import sys

    repo_files = save_pipeline(tmp_path / "served", diffusers.DDIMScheduler(prediction_type="v_prediction"))
    (repo_files / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickled weights are never fetched")
    log: list[tuple[str, str]] = []
    httpd = _hub_server(repo_files, "someone/tiny-ddpm", log)
    cache = tmp_path / "hub"
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{httpd.server_address[1]}", "HF_HUB_CACHE": str(cache),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0"}
    code = ("import sys, reddiff\n"
            "try:\n"
            "    p = reddiff.load_prior(sys.argv[1], progress=False)\n"
            "    print(p.prediction, p.info['path'])\n"
            "except reddiff.ReddiffError as e:\n"
            "    print('error:', e); sys.exit(2)\n")

    def load(spec: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, spec], env={**env, **extra}, capture_output=True,
                              text=True, timeout=300)

    try:
        online = load("diffusers:someone/tiny-ddpm")
        missing = load("diffusers:someone/not-there")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert online.returncode == 0, online.stderr
    prediction, path = online.stdout.split()
    assert prediction == "v_prediction" and Path(path).is_relative_to(cache)
    fetched = {p for m, p in log if m == "GET" and "/resolve/" in p}
    assert any(p.endswith(".safetensors") for p in fetched) and not any(p.endswith(".bin") for p in fetched)
    assert missing.returncode == 2 and "someone/not-there" in missing.stdout and str(cache) in missing.stdout
    # the server is gone: offline, the cached copy is used
    offline = load("diffusers:someone/tiny-ddpm", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0 and offline.stdout.split() == [prediction, path], offline.stdout + offline.stderr


@pytest.mark.parametrize("objective", ["flow", "eps"])
def test_train_a_diffusers_unet_and_load_it_back(tmp_path, capsys, objective):
    """`reddiff train --arch unet2d` exports a diffusers folder that the diffusers route loads, and diffusers' own
    pipeline samples from it."""
    from reddiff.cli import main

    out = tmp_path / "run"
    small = ["--batch-size", "2", "--crop", "16", "--channels", "16", "--channel-mult", "1,2", "--no-progress"]
    argv = ["train", "--output", str(out), "--arch", "unet2d", "--objective", objective, *small]
    assert main([*argv, "--steps", "3"]) == 0, capsys.readouterr().err
    assert f"--prior diffusers:{out / 'diffusers'}" in capsys.readouterr().out
    prior = load_prior(f"diffusers:{out / 'diffusers'}", progress=False)
    assert prior.schedule.family == ("flow" if objective == "flow" else "vp")
    assert prior.prediction == ("flow" if objective == "flow" else "epsilon")
    pipe = diffusers.DDPMPipeline.from_pretrained(out / "diffusers")
    images = pipe(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape[-1] == 3 and bool(torch.isfinite(torch.from_numpy(images)).all())
    # resuming continues the same architecture and objective; another objective is refused in one line
    assert main([*argv, "--steps", "4", "--resume"]) == 0
    other = "eps" if objective == "flow" else "flow"
    capsys.readouterr()
    code = main(["train", "--output", str(out), "--arch", "unet2d", "--objective", other, *small, "--steps", "5",
                 "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "objective" in err[0]


def test_flow_objective_needs_the_diffusers_unet(tmp_path, capsys):
    from reddiff.cli import main

    code = main(["train", "--output", str(tmp_path / "r"), "--objective", "flow", "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "use --arch unet2d" in err[0]
    assert not (tmp_path / "r").exists()
