"""Latent priors: exactness of latent RED-diff where it can be checked (W = I is pixel RED-diff; a linear decoder
over the exact Gaussian-mixture prior lands in the posterior's modes), a tiny random Stable-Diffusion-architecture
pipeline saved as diffusers writes it and loaded back through ``sd:FOLDER`` (latent DDIM equal to diffusers' own
``StableDiffusionPipeline``), every task through both forms, and one-line refusals."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import diffusers
import pytest
import torch
import transformers

from reddiff import DDIM, DPS, LatentPrior, LinearAutoencoder, Problem, RedDiff, load_prior, make_operator
from reddiff.errors import CheckpointError, ReddiffError, SolverError
from reddiff.operators import TASKS
from reddiff.operators.matrix import MatrixOperator
from reddiff.solvers.latent import exact_pixel_step
from reddiff.tools.gmm import dense_matrix, modes_covered, ring_problem

F64 = torch.float64
SIDE = 64  # pixels; the tiny autoencoder halves three times: 8x8 latents


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _tokenizer(folder: Path) -> transformers.CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=12)


def tiny_vae(seed: int = 0) -> diffusers.AutoencoderKL:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                      up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                                      latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=SIDE)
    return _perturb(vae, seed + 1)


def tiny_cond_unet(seed: int = 2, cross: int = 16) -> diffusers.UNet2DConditionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross, norm_num_groups=8,
            attention_head_dim=4)
    return _perturb(unet, seed + 1)


def sd_scheduler(prediction: str = "epsilon") -> diffusers.DDIMScheduler:
    """Stable Diffusion's scheduler config: its betas and DDIM conventions (steps_offset 1, set_alpha_to_one
    false)."""
    return diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   clip_sample=False, prediction_type=prediction, steps_offset=1,
                                   set_alpha_to_one=False)


def save_sd(folder: Path, prediction: str = "epsilon", text: bool = True) -> Path:
    """A tiny Stable Diffusion pipeline, saved as diffusers does."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=54, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    pipe = diffusers.StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=_perturb(encoder, 5), tokenizer=_tokenizer(folder.parent / f"{folder.name}_tok"),
        unet=tiny_cond_unet(), scheduler=sd_scheduler(prediction), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder)
    if not text:  # the same pipeline without its text encoder
        shutil.rmtree(folder / "text_encoder")
        index = json.loads((folder / "model_index.json").read_text())
        index.pop("text_encoder")
        (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def save_latent_unet2d(folder: Path) -> Path:
    """An unconditional latent pipeline: a UNet2DModel over the autoencoder's latents."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        unet = diffusers.UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                     block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                     up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                     attention_head_dim=8)
    _perturb(unet, 8).save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    sd_scheduler("v_prediction").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "DiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return save_sd(tmp_path_factory.mktemp("sd") / "pipe")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def gens(n: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


# -- exactness ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["pinv", "random", "zeros"])
@pytest.mark.parametrize("data_term", ["mean", "paper"])
def test_identity_autoencoder_is_pixel_reddiff(init, data_term):
    prior, problem, _ = ring_problem(3, 4)
    latent = LatentPrior(LinearAutoencoder(torch.eye(4, dtype=F64)), prior, pixel_range=None)
    for solver in (RedDiff(steps=60, lr=0.2, init=init, data_term=data_term, latent_mode="direct"),
                   RedDiff(steps=60, lr=0.2, init=init, data_term=data_term, latent_mode="direct", sigma_x0=0.1,
                           lr_schedule="cosine")):
        pixel = solver(prior, problem, gens(4))
        ours = solver(latent, problem, gens(4))
        assert float((ours - pixel).abs().max()) <= 1e-6


def test_identity_autoencoder_on_images_with_a_real_operator():
    """W = I on 8x8 images through the exact mixture prior: an image-shaped operator, any init."""
    g = torch.Generator().manual_seed(0)
    d = 3 * 8 * 8
    means = torch.randn(3, d, generator=g, dtype=F64) * 0.5
    covs = 0.05 * torch.eye(d, dtype=F64).expand(3, d, d).clone()
    from reddiff.tools.gmm import GaussianMixturePrior

    prior = GaussianMixturePrior(means, covs, torch.ones(3, dtype=F64))
    op = make_operator("sr:2", (3, 8, 8)).to(F64)
    x = means[:1].reshape(1, 3, 8, 8)
    problem = Problem(op(x) + 0.02 * torch.randn(op(x).shape, generator=g, dtype=F64), op, 0.02)
    latent = LatentPrior(LinearAutoencoder(torch.eye(d, dtype=F64), (3, 8, 8)), prior, pixel_range=None)
    solver = RedDiff(steps=40, lr=0.1, latent_mode="direct")
    assert float((solver(latent, problem, gens(1)) - solver(prior, problem, gens(1))).abs().max()) <= 1e-6


def _in_modes(mode: str, trials: int = 10, n: int = 8, **settings) -> float:
    """Share of estimates inside a mode of the ring problem's posterior, for pixel RED-diff (``mode="pixel"``) or
    latent RED-diff through a linear decoder ``D(z) = W z`` from R^4 into R^6 (the pixel problem whose latent
    problem is the ring problem: ``A_pixel = A W^T``)."""
    w, _ = torch.linalg.qr(torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
    shares = []
    for trial in range(trials):
        prior, problem, posterior = ring_problem(trial, n)
        solver = RedDiff(steps=100, lr=0.1, lam=0.25, latent_mode=mode if mode != "pixel" else "split", **settings)
        if mode == "pixel":
            z = solver(prior, problem, gens(n, 1000 * trial))
        else:
            latent = LatentPrior(LinearAutoencoder(w), prior, pixel_range=None)
            pixel_problem = Problem(problem.y, MatrixOperator(problem.operator.matrix @ w.T), problem.sigma_y)
            x = solver(latent, pixel_problem, gens(n, 1000 * trial))
            z = x @ w
            assert float((x - z @ w.T).norm(dim=1).max()) <= 1e-6  # the estimate stays in the decoder's range
        shares.append(modes_covered(posterior, z)[1])
    return sum(shares) / len(shares)


def test_linear_decoder_estimates_land_in_the_posterior_modes_as_often_as_pixel_ones():
    pixel = _in_modes("pixel")
    assert pixel >= 0.9
    assert _in_modes("direct") >= pixel - 0.05
    assert _in_modes("split") >= pixel - 0.05
    # an overweighted coupling freezes z at the pixel start: the check can fail
    assert _in_modes("split", trials=4, rho=10.0) < 0.5


@pytest.mark.parametrize("task", ["inpaint-random:0.5", "sr:2", "deblur-gauss", "colorize", "cs:0.5"])
def test_exact_pixel_step_is_the_dense_least_squares_solution(task):
    op = make_operator(task, (3, 8, 8), generator=torch.Generator().manual_seed(1)).to(F64)
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, *op.y_shape, generator=g, dtype=F64)
    d = torch.randn(2, 3, 8, 8, generator=g, dtype=F64)
    k_data, k_rho = 0.7, 0.05
    a = dense_matrix(op)
    lhs = k_data * a.T @ a + k_rho * torch.eye(a.shape[1], dtype=F64)
    rhs = k_data * y.reshape(2, -1) @ a + k_rho * d.reshape(2, -1)
    dense = torch.linalg.solve(lhs, rhs.T).T
    ours = exact_pixel_step(op, y, d, k_data, k_rho).reshape(2, -1)
    assert float((ours - dense).abs().max()) <= 1e-9 * float(dense.abs().max())


# -- diffusers pipelines ------------------------------------------------------------------------------------------
def _pipeline_latents(folder: Path, prompt: str, guidance: float, steps: int, x_T: torch.Tensor) -> torch.Tensor:  # noqa: N803
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=prompt, latents=x_T.clone(), guidance_scale=guidance, num_inference_steps=steps,
               output_type="latent", height=SIDE, width=SIDE)
    return out.images


@pytest.mark.parametrize("prompt,guidance", [("", 1.0), ("a cat", 3.0)])
def test_latent_ddim_equals_the_stable_diffusion_pipeline(sd_folder, prompt, guidance):
    prior = load_prior(f"sd:{sd_folder}", progress=False, prompt=prompt, guidance=guidance)
    assert isinstance(prior, LatentPrior) and prior.info["route"] == "latent"
    assert prior.steps_offset == 1 and prior.final_abar == pytest.approx(1 - 0.00085)
    shape = prior.latent_shape((1, 3, SIDE, SIDE))
    assert shape == (1, 4, 8, 8)
    ddim = DDIM(steps=5, timestep_spacing="leading")
    ours = ddim.run(prior, None, shape, torch.Generator().manual_seed(0), None, dtype=torch.float32,
                    device=torch.device("cpu"))
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # noqa: N806
    theirs = _pipeline_latents(sd_folder, prompt, guidance, 5, x_T)
    assert rel(ours, theirs) <= 1e-4, rel(ours, theirs)
    # decoded as the pipeline decodes (its output is (x + 1) / 2 clamped)
    image = ddim.sample(prior, (1, 3, SIDE, SIDE), torch.Generator().manual_seed(0))
    vae = diffusers.AutoencoderKL.from_pretrained(sd_folder / "vae")
    with torch.no_grad():
        ref = vae.decode(theirs / vae.config.scaling_factor).sample
    assert rel(image, ref) <= 1e-4


def test_the_prompt_changes_the_prior_and_an_unconditional_latent_unet_loads(sd_folder, tmp_path):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    empty = load_prior(f"sd:{sd_folder}", progress=False)
    cat = load_prior(f"sd:{sd_folder}", progress=False, prompt="a cat")
    with torch.no_grad():
        assert rel(empty.eps(z, 500), cat.eps(z, 500)) > 1e-3
    folder = save_latent_unet2d(tmp_path / "ldm")
    prior = load_prior(f"diffusers:{folder}", progress=False)  # the diffusers route spots the autoencoder
    assert isinstance(prior, LatentPrior) and prior.prediction == "v_prediction"
    ours = DDIM(steps=4, timestep_spacing="leading").run(prior, None, (1, 4, 8, 8), torch.Generator().manual_seed(2),
                                                           None, dtype=torch.float32, device=torch.device("cpu"))
    sched = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sched.set_timesteps(4)
    for t in sched.timesteps:
        with torch.no_grad():
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    assert rel(ours, x) <= 1e-5


@pytest.mark.parametrize("mode", ["split", "direct"])
def test_every_task_runs_through_both_forms_at_any_size(sd_folder, mode):
    prior = load_prior(f"sd:{sd_folder}", progress=False)
    from reddiff.io import load_image  # noqa: F401 - the package's image path is what the CLI uses

    clean = torch.rand(1, 3, 36, 44, generator=torch.Generator().manual_seed(0)) * 2 - 1  # not multiples of 8
    mask = torch.rand(36, 44, generator=torch.Generator().manual_seed(2)) > 0.3
    for task in TASKS:
        op = make_operator(task, clean.shape[1:], generator=torch.Generator().manual_seed(1),
                           mask=mask if task == "inpaint-mask" else None)
        y = op(clean)
        out = RedDiff(steps=3, lr=0.05, latent_mode=mode)(prior, Problem(y, op, 0.01), gens(1))
        assert out.shape == clean.shape and bool(torch.isfinite(out).all()), task
        assert float(out.std()) > 0, task


@pytest.mark.parametrize("data_term,task", [("mean", "sr:2"), ("paper", "deblur-gauss"), ("reference", "inpaint-box"),
                                            ("mean", "inpaint-random:0.7")])
def test_the_exact_pixel_step_minimises_the_split_forms_own_pixel_loss(data_term, task):
    """The weights handed to the closed form are those of the loss the optimizer path descends: its gradient
    vanishes at the closed-form solution (and not at the decoded latent)."""
    from reddiff.solvers.latent import pixel_loss, pixel_weights

    op = make_operator(task, (3, 16, 16), generator=torch.Generator().manual_seed(1)).to(F64)
    g = torch.Generator().manual_seed(2)
    y = op(torch.rand(2, 3, 16, 16, generator=g, dtype=F64) * 2 - 1)
    y = y + 0.05 * torch.randn(y.shape, generator=g, dtype=F64)
    problem = Problem(y, op, 0.05)
    d = torch.rand(2, 3, 16, 16, generator=g, dtype=F64) * 2 - 1
    solver = RedDiff(data_term=data_term, rho=0.3, obs_weight=1.7)
    best = exact_pixel_step(op, y, d, *pixel_weights(solver, problem, problem.noise))

    def grad_at(x: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        pixel_loss(solver, problem, problem.noise, x, d)[0].sum().backward()
        return x.grad

    assert float(grad_at(best).abs().max()) <= 1e-10 * float(grad_at(d).abs().max())
    assert float(grad_at(d).abs().max()) > 0


def test_latent_ddim_reports_decoded_images_to_its_callback(sd_folder):
    prior = load_prior(f"sd:{sd_folder}", progress=False)
    seen: list = []
    out = DDIM(steps=3).sample(prior, (1, 3, 36, 44), torch.Generator().manual_seed(0), callback=seen.append)
    assert out.shape == (1, 3, 36, 44) and [s.x.shape for s in seen] == [(1, 3, 36, 44)] * 3


def test_evaluate_leaves_out_the_solvers_a_latent_prior_refuses(sd_folder, tmp_path):
    from reddiff.experiment.evaluation import evaluate

    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    Image.fromarray((torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(
        data / "a.png")
    prior = load_prior(f"sd:{sd_folder}", progress=False)
    report = evaluate(prior, data, tmp_path / "out", task="sr:2", solvers={"reddiff": RedDiff(steps=2),
                                                                           "dps": DPS(steps=2)},
                      size=32, metrics=["psnr"])
    assert "reddiff" in report["solvers"] and "dps" in report["refused"]


def test_split_form_reports_its_coupling_and_a_vanishing_coupling_reproduces_y(sd_folder):
    prior = load_prior(f"sd:{sd_folder}", progress=False)
    clean = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    op = make_operator("inpaint-random:0.5", clean.shape[1:], generator=torch.Generator().manual_seed(1))
    y = op(clean)
    seen: list = []
    RedDiff(steps=4, lr=0.05, latent_mode="split")(prior, Problem(y, op), gens(1),
                                                   callback=lambda info: seen.append(info.losses))
    assert all(s["couple"] > 0 for s in seen)
    x = RedDiff(steps=4, lr=0.05, latent_mode="split", rho=1e-6)(prior, Problem(y, op), gens(1))
    assert float((op(x) - y).abs().max()) <= 1e-4  # a vanishing coupling leaves the data term alone: y exactly


def test_samplers_that_need_a_pixel_denoiser_refuse_latent_priors(sd_folder):
    prior = load_prior(f"sd:{sd_folder}", progress=False)
    op = make_operator("sr:4", (3, SIDE, SIDE))
    problem = Problem(torch.zeros(1, *op.y_shape), op)
    with pytest.raises(SolverError, match="DPS cannot use the latent prior .*use ddim, reddiff"):
        DPS(steps=2)(prior, problem)
    gray = make_operator("sr:4", (1, SIDE, SIDE))
    with pytest.raises(SolverError, match="3-channel images, got 1 channel"):
        RedDiff(steps=2)(prior, Problem(torch.zeros(1, *gray.y_shape), gray))
    with pytest.raises(SolverError, match="repulsion"):
        RedDiff(steps=2, repulsion=1.0)(prior, problem)


def test_bad_latent_pipelines_are_one_line(sd_folder, tmp_path):
    broken = tmp_path / "no_vae"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(CheckpointError, match="no vae/ component"):
        load_prior(f"sd:{broken}", progress=False)
    no_text = save_sd(tmp_path / "no_text", text=False)
    with pytest.raises(CheckpointError, match="no text_encoder/ to embed the prompt 'a cat'"):
        load_prior(f"sd:{no_text}", progress=False, prompt="a cat")
    unconditional = save_latent_unet2d(tmp_path / "ldm")
    with pytest.raises(CheckpointError, match="--prompt needs a text-conditioned pipeline"):
        load_prior(f"sd:{unconditional}", progress=False, prompt="a cat")
    with pytest.raises(ReddiffError, match="--prompt is for text-conditioned latent priors"):
        load_prior("bundled", prompt="a cat")
    pickled = tmp_path / "pickled"
    shutil.copytree(sd_folder, pickled)
    for f in (pickled / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(CheckpointError, match="only pickled weights"):
        load_prior(f"sd:{pickled}", progress=False)
    with pytest.raises(CheckpointError, match="not a diffusers pipeline folder"):
        load_prior(f"sd:{sd_folder / 'unet'}", progress=False)


# -- command line ----------------------------------------------------------------------------------------------------
def test_cli_solve_and_compare_with_a_latent_prior(sd_folder, small_image, tmp_path, capsys):
    from reddiff.cli import main

    out = tmp_path / "o"
    argv = ["solve", "--task", "sr:4", "--input", str(small_image), "--output", str(out), "--sigma-y", "0.01",
            "--prior", f"sd:{sd_folder}", "--prompt", "a cat", "--guidance", "2", "--latent-mode", "direct",
            "--steps", "3", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    rec = json.loads((out / "coffee/run.json").read_text())
    assert rec["solver"]["latent_mode"] == "direct"
    assert rec["prior"]["prompt"] == "a cat" and rec["prior"]["guidance"] == 2.0 and rec["prior"]["latent"] is True
    assert rec["settings"]["prompt"] == "a cat"  # another prompt is another result
    argv[argv.index("a cat")] = "a dog"
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    cmp_out = tmp_path / "c"
    assert main(["compare", "--task", "sr:4", "--input", str(small_image), "--output", str(cmp_out), "--solvers",
                 "reddiff,dps,ddim", "--prior", f"sd:{sd_folder}", "--steps", "2", "--no-progress"]) == 0
    rows = {r["solver"]: r for r in json.loads((cmp_out / "compare.json").read_text())["images"][0]["results"]}
    assert "psnr" in rows["reddiff"] and "psnr" in rows["ddim"]
    assert "cannot use the latent prior" in rows["dps"]["error"]


def test_cli_bad_latent_input_is_one_line(sd_folder, small_image, tmp_path, capsys):
    from reddiff.cli import main

    def err(*extra: str) -> str:
        argv = ["solve", "--task", "sr:4", "--input", str(small_image), "--output", str(tmp_path / "o"),
                "--steps", "2", "--no-progress", "--overwrite", *extra]
        assert main(argv) == 2
        text = capsys.readouterr().err.strip()
        assert "\n" not in text and "Traceback" not in text
        return text

    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "unet")
    assert "no unet/ component" in err("--prior", f"sd:{broken}")
    assert "--prompt is for text-conditioned latent priors" in err("--prompt", "a cat")
    assert "must be >= 1" in err("--prior", f"sd:{sd_folder}", "--guidance", "0.5")
    assert not (tmp_path / "o").exists()


# -- cost -------------------------------------------------------------------------------------------------------------
def test_stable_diffusion_architectures_have_the_published_sizes():
    from reddiff.networks.latent_route import SD_ARCHITECTURES

    published = {"sd-1.5": 859_520_964, "sd-2.1": 865_910_724}  # UNet parameters of the released checkpoints
    for name, arch in SD_ARCHITECTURES.items():
        with torch.device("meta"):
            unet = diffusers.UNet2DConditionModel(**arch["unet"])
            vae = diffusers.AutoencoderKL(**arch["vae"])
        assert sum(p.numel() for p in unet.parameters()) == published[name]
        assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_bench_times_the_decoder_and_both_latent_forms(sd_folder):
    from reddiff.tools.bench import BenchConfig, format_table, run_bench

    rep = run_bench(BenchConfig(network=f"sd:{sd_folder}", size=32, batch_sizes=(1,), warmup=0, repeats=1,
                                solvers=("reddiff", "dps")))
    assert [r["method"] for r in rep["rows"]] == ["forward", "decode", "decode_vjp", "decode_vjp_stored",
                                                  "reddiff-direct", "reddiff-split"]
    assert rep["latent"] and "DPS cannot use latent priors" in rep["skipped"]["dps"]
    assert all(r["seconds"] > 0 for r in rep["rows"])
    assert "decoder VJP" in format_table(rep)


def test_the_app_offers_only_the_solvers_a_latent_prior_takes(sd_folder):
    from types import SimpleNamespace

    from reddiff.app.server import Limits, build_solver, options

    engine = SimpleNamespace(prior=load_prior(f"sd:{sd_folder}", progress=False), limits=Limits())
    assert list(options(engine)["solvers"]) == ["reddiff"]
    solver, _ = build_solver(engine, "dps", "sr:4", 0.0, {"steps": "2"})
    with pytest.raises(SolverError, match="DPS cannot use the latent prior"):
        solver.check_prior(engine.prior)


@pytest.mark.parametrize("mode", ["split", "direct"])
def test_every_noise_model_and_robust_data_term_runs_through_both_forms(sd_folder, mode):
    from reddiff.noise import PoissonNoise

    prior = load_prior(f"sd:{sd_folder}", progress=False)
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for task in ("sr:2", "deblur-gauss", "jpeg:50"):
        op = make_operator(task, clean.shape[1:], generator=torch.Generator().manual_seed(1))
        y = op(clean).clamp(-1, 1)
        for problem, robust in ((Problem(y, op, noise=PoissonNoise(50.0)), "none"), (Problem(y, op, 0.02), "huber"),
                                (Problem(y, op, 0.02), "cauchy:0.1")):
            out = RedDiff(steps=2, lr=0.05, latent_mode=mode, robust=robust)(prior, problem, gens(1))
            assert out.shape == clean.shape and bool(torch.isfinite(out).all()), (task, robust)
