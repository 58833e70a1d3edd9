"""Speed and memory of one solver step against a bare network forward (``reddiff bench``).

Everything is measured side by side in one run on the same network, image size, batch, device and precision:
a bare forward under ``no_grad``, and one step of RED-diff, DPS, ΠGDM and DDRM (timed between consecutive step
callbacks of a real solver run, after warm-up steps). Reported: the median seconds per step, its ratio to the bare
forward, peak memory (CUDA: max allocated above the baseline; CPU: peak resident-set growth) and images per second.

The ratio is *paired*: right after each solver step the callback times one bare forward on the same input (outside
the step's interval), and the ratio is the median of the per-step quotients. A shared or thermally throttled machine
drifts by tens of per cent over a minute; a quotient of two timings taken seconds apart cancels that drift, where
the quotient of two medians taken minutes apart does not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ReddiffError
from ..runtime import Runtime, use_runtime
from .profiling import PeakMemory

__all__ = ["BENCH_NETWORKS", "BenchConfig", "build_bench_prior", "run_bench", "format_table"]

#: networks with random weights by name: the public checkpoints' architectures (no download needed); ``sd-1.5``
#: and ``sd-2.1`` are latent priors (Stable Diffusion's UNet and autoencoder).
BENCH_NETWORKS = ("bundled", "imagenet256-uncond", "ffhq256", "sd-1.5", "sd-2.1")


@dataclass
class BenchConfig:
    """What to measure.

    Args:
        network: ``bundled`` (the shipped prior), ``imagenet256-uncond`` / ``ffhq256`` (those architectures with
            random weights), or any ``--prior`` spec (a checkpoint path, ``diffusers:FOLDER``, ``file.py:make``).
        size: image side in pixels.
        batch_sizes: batch sizes to measure.
        device: torch device.
        precision: ``fp32``, ``bf16`` or ``fp16`` (network autocast).
        channels_last: channels-last network.
        compile: ``torch.compile`` the network.
        solvers: which solver steps to time beside the bare forward.
        task: the measurement operator (SVD-structured so that DDRM can run).
        warmup: untimed steps first.
        repeats: timed steps.
    """

    network: str = "bundled"
    size: int = 256
    batch_sizes: tuple[int, ...] = (1, 8)
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    solvers: tuple[str, ...] = ("reddiff", "dps", "pigdm", "ddrm")
    task: str = "sr:4"
    warmup: int = 2
    repeats: int = 5


def build_bench_prior(network: str, device: torch.device) -> Any:
    """The prior to benchmark: a named architecture with random weights, the bundled prior, or a checkpoint."""
    from ..networks.adm import create_model
    from ..networks.hub import NAMED_PRIORS
    from ..networks.latent_route import SD_ARCHITECTURES, random_latent_prior
    from ..prior import DiffusionPrior, load_prior

    if network in SD_ARCHITECTURES:
        return random_latent_prior(network, device)
    if network in NAMED_PRIORS:
        cfg = dict(NAMED_PRIORS[network].config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = create_model(**cfg)
        net.eval().requires_grad_(False)
        return DiffusionPrior(net.to(device), learned_sigma=net.learn_sigma,
                              info={"name": f"{network} (random weights)", "config": cfg})
    return load_prior(network, device=device, progress=False).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_call(prior: Any, x: torch.Tensor, device: torch.device) -> Callable[[], float]:
    """A timed bare network call: ``prior.network(x, time)`` at a mid timestep, without the prior's conversions."""
    mid = prior.schedule.timesteps(3)[1]
    t = torch.full((x.shape[0],), mid.item(), dtype=mid.dtype, device=device)
    t_in = prior.network_time(t) if prior.network_time is not None else t

    def once() -> float:
        with torch.no_grad():
            _sync(device)
            t0 = time.perf_counter()
            prior.network(x, t_in)
            _sync(device)
            return time.perf_counter() - t0

    return once


def _time_forward(forward: Callable[[], float], cfg: BenchConfig, device: torch.device) -> tuple[list[float], int]:
    with PeakMemory(device) as mem:
        times = [forward() for _ in range(cfg.warmup + cfg.repeats)]
    return times[cfg.warmup :], mem.peak_bytes


def _decoder_calls(prior: Any, z: torch.Tensor, device: torch.device) -> tuple[Callable[[], float],
                                                                               Callable[[], float]]:
    """Timed decoder forward (no gradient) and decoder VJP (forward and backward to the latent) of a latent prior."""
    v = torch.randn(prior.decode(z[:, :, :1, :1]).shape[:2] + (1, 1), device=device)

    def forward() -> float:
        with torch.no_grad():
            _sync(device)
            t0 = time.perf_counter()
            prior.decode(z)
            _sync(device)
            return time.perf_counter() - t0

    def vjp() -> float:
        leaf = z.detach().requires_grad_(True)
        _sync(device)
        t0 = time.perf_counter()
        out = prior.decode(leaf)
        out.backward(v.expand_as(out))
        _sync(device)
        return time.perf_counter() - t0

    return forward, vjp


def _time_solver(solver: Any, prior: Any, problem: Any, cfg: BenchConfig, device: torch.device,
                 forward: Callable[[], float]) -> tuple[list[float], list[float], int]:
    """Seconds of each timed step of ``solver`` (built with ``warmup + repeats`` steps), of the reference timed right
    after it, and the solver's peak memory."""
    intervals: list[float] = []
    paired: list[float] = []
    start = [0.0]

    def on_step(_info: Any) -> None:
        _sync(device)
        intervals.append(time.perf_counter() - start[0])
        paired.append(forward())
        start[0] = time.perf_counter()

    gens = [torch.Generator(device="cuda" if device.type == "cuda" else "cpu").manual_seed(i)
            for i in range(problem.batch_size)]
    with PeakMemory(device) as mem:
        _sync(device)
        start[0] = time.perf_counter()
        solver(prior, problem, generator=gens, callback=on_step)
    return intervals[cfg.warmup :], paired[cfg.warmup :], mem.peak_bytes


def run_bench(cfg: BenchConfig, progress: bool = False) -> dict[str, Any]:
    """Measure and return a JSON-serialisable report (rows per batch size and method)."""
    from ..operators import make_operator
    from ..solvers.base import Problem

    if cfg.repeats < 1 or cfg.warmup < 0 or cfg.size < 8 or not cfg.batch_sizes:
        raise ReddiffError("bench needs repeats >= 1, warmup >= 0, size >= 8 and at least one batch size")
    from ..latent import LatentPrior
    from ..solvers import SOLVERS

    device = torch.device(cfg.device)
    prior = build_bench_prior(cfg.network, device)
    use_runtime(prior, Runtime(cfg.precision, cfg.channels_last, cfg.compile))
    latent = isinstance(prior, LatentPrior)
    channels = prior.autoencoder.image_channels if latent else getattr(prior.network, "in_channels", 3)
    steps = cfg.warmup + cfg.repeats
    rows, skipped = [], {}
    for batch in cfg.batch_sizes:
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand(batch, channels, cfg.size, cfg.size, generator=gen) * 2 - 1).to(device)
        op = make_operator(cfg.task, (channels, cfg.size, cfg.size), generator=torch.Generator().manual_seed(0))
        op = op.to(device)
        y = op.A(x)
        problem = Problem(y, op, 0.01)
        net_in = torch.randn(prior.latent_shape(x.shape), generator=gen).to(device) if latent else x
        forward = _forward_call(prior, net_in, device)
        fwd, fwd_mem = _time_forward(forward, cfg, device)
        base = statistics.median(fwd)
        rows.append({"batch": batch, "method": "forward", "seconds": base, "ratio": 1.0,
                     "peak_mb": fwd_mem / 2**20, "images_per_s": batch / base})
        reference = forward
        solvers: list[tuple[str, Any]] = []
        if latent:  # the decoder alone, and RED-diff's two forms against (network forward + decoder VJP)
            dec, vjp = _decoder_calls(prior, net_in, device)
            calls = [("decode", dec), ("decode_vjp", vjp)]
            vae = getattr(prior.autoencoder, "vae", None)
            if getattr(prior.autoencoder, "checkpointing", False) and vae is not None:
                def stored(vae: Any = vae, vjp: Callable[[], float] = vjp) -> float:
                    vae.disable_gradient_checkpointing()  # the VJP keeping every activation, for its memory
                    try:
                        return vjp()
                    finally:
                        vae.enable_gradient_checkpointing()

                calls.append(("decode_vjp_stored", stored))
            for method, call in calls:
                times, mem = _time_forward(call, cfg, device)
                rows.append({"batch": batch, "method": method, "seconds": statistics.median(times),
                             "ratio": statistics.median(times) / base, "peak_mb": mem / 2**20,
                             "images_per_s": batch / statistics.median(times)})

            def reference(forward: Callable[[], float] = forward, vjp: Callable[[], float] = vjp) -> float:
                return forward() + vjp()

        for name in cfg.solvers:
            if latent and not SOLVERS[name].latent_capable:
                skipped[name] = f"{SOLVERS[name].label} cannot use latent priors"
            elif latent and name == "reddiff":
                solvers += [(f"reddiff-{m}", SOLVERS[name](steps=steps, latent_mode=m)) for m in ("direct", "split")]
            else:
                solvers.append((name, SOLVERS[name](steps=steps)))
        for method, solver in solvers:
            times, beside, mem = _time_solver(solver, prior, problem, cfg, device, reference)
            med = statistics.median(times)
            rows.append({"batch": batch, "method": method, "seconds": med,
                         "ratio": statistics.median(a / b for a, b in zip(times, beside)),
                         "forward_seconds_paired": statistics.median(beside),
                         "peak_mb": mem / 2**20, "memory_ratio": (mem / fwd_mem) if fwd_mem else None,
                         "images_per_s": batch / med})
    for r in rows:
        if r["method"] == "reddiff":
            dps = next((q for q in rows if q["batch"] == r["batch"] and q["method"] == "dps"), None)
            r["vs_dps"] = r["seconds"] / dps["seconds"] if dps else None
    return {
        "config": {**cfg.__dict__, "batch_sizes": list(cfg.batch_sizes), "solvers": list(cfg.solvers)},
        "network": prior.info.get("name"),
        "parameters": sum(p.numel() for p in prior.network.parameters()),
        "latent": latent,
        "reference": "network forward + decoder VJP" if latent else "network forward",
        "skipped": skipped,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table."""
    c = report["config"]
    lines = [f"network {report['network']} ({report['parameters'] / 1e6:.1f}M params), {c['size']}x{c['size']}, "
             f"{report['device_name']}, {c['precision']}{', channels-last' if c['channels_last'] else ''}"
             f"{', compiled' if c['compile'] else ''}, torch {report['torch']}, {report['threads']} threads",
             f"{'batch':>5} {'method':<17} {'s/step':>9} {'x ref':>6} {'peak MB':>9} {'x fwd mem':>9} "
             f"{'img/s':>8} {'vs DPS':>7}"]
    for r in report["rows"]:
        mem_ratio = f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") is not None else "-"
        vs = f"{r['vs_dps']:.2f}" if r.get("vs_dps") is not None else "-"
        lines.append(f"{r['batch']:>5} {r['method']:<17} {r['seconds']:>9.4f} {r['ratio']:>6.2f} "
                     f"{r['peak_mb']:>9.1f} {mem_ratio:>9} {r['images_per_s']:>8.2f} {vs:>7}")
    lines.append(f"x ref: a solver step's time over the {report.get('reference', 'network forward')} timed right "
                 "after it (paired); other rows: over the network forward")
    if report.get("latent"):
        lines.append("decode_vjp: the decoder's forward and backward with gradient checkpointing (as the solvers run "
                     "it); decode_vjp_stored: keeping every activation instead")
    lines += [f"{name}: n/a, {why}" for name, why in report.get("skipped", {}).items()]
    return "\n".join(lines)
