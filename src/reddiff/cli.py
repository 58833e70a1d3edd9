"""The ``reddiff`` command line: ``solve``, ``degrade``, ``list`` and ``eval``.

Every subcommand is callable from Python as ``main(["solve", ...])`` and returns the exit code. A user error
(missing file, unknown task, bad number, incompatible checkpoint, ...) prints one line ``reddiff: error: ...`` to
stderr and returns 2; nothing half-written is left on disk (every file is written atomically, and the per-image
``run.json`` is written last).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ReddiffError

__all__ = ["main", "build_parser"]

#: Output file names inside ``DIR/<image stem>/``.
ESTIMATE, MEASUREMENT, GRID, RUN_JSON, MASK = "estimate.png", "measurement.png", "grid.png", "run.json", "mask.png"


# --------------------------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, *, minimum: float | None = None, strict: bool = False, what: str = "value"):
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if minimum is not None and (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        return value

    parse.__name__ = what
    return parse


_pos_int = _number(int, minimum=1, what="positive integer")
_nonneg_int = _number(int, minimum=0, what="integer >= 0")
_pos_float = _number(float, minimum=0, strict=True, what="number > 0")
_nonneg_float = _number(float, minimum=0, what="number >= 0")


def _add_prior_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prior")
    g.add_argument(
        "--prior",
        metavar="SPEC",
        default="bundled",
        help="diffusion prior: 'bundled' (the small natural-image prior shipped with reddiff), a named prior "
        "(`reddiff list priors`; downloaded to the cache on first use), or the path of a guided-diffusion .pt "
        "checkpoint or a reddiff .safetensors export (default: %(default)s)",
    )
    g.add_argument(
        "--prior-config",
        metavar="JSON",
        default=None,
        help="JSON file of guided-diffusion create_model arguments for --prior (default: the named prior's own, "
        "the JSON beside a .safetensors file, or inferred from the checkpoint)",
    )
    g.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, cuda:1, ...")
    _add_speed_args(g)


def _add_speed_args(g: Any) -> None:
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="network precision (autocast; the solver's variables stay fp32) (default: %(default)s)")
    g.add_argument("--channels-last", action="store_true", help="run the network in channels-last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the network (pays off over many steps)")


#: Display names of the solvers.
SOLVER_LABELS = {"reddiff": "RED-diff", "dps": "DPS", "pigdm": "ΠGDM", "ddrm": "DDRM", "ddim": "DDIM"}

#: CLI option -> (solver field, solvers that have it). Options left out take each solver's default.
SOLVER_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "steps": ("steps", ("reddiff", "dps", "pigdm", "ddrm", "ddim")),
    "lr": ("lr", ("reddiff",)),
    "lam": ("lam", ("reddiff",)),
    "weighting": ("weighting", ("reddiff",)),
    "obs_weight": ("obs_weight", ("reddiff",)),
    "init": ("init", ("reddiff",)),
    "order": ("order", ("reddiff",)),
    "optimizer": ("optimizer", ("reddiff",)),
    "data_term": ("data_term", ("reddiff",)),
    "t_max": ("t_max", ("reddiff",)),
    "lr_schedule": ("lr_schedule", ("reddiff",)),
    "eta": ("eta", ("dps", "pigdm", "ddrm", "ddim")),
    "eta_b": ("eta_b", ("ddrm",)),
    "zeta": ("zeta", ("dps",)),
    "guidance_scale": ("guidance_scale", ("pigdm",)),
    "no_clip_x0": ("clip_x0", ("pigdm",)),
}


def _add_solver_args(p: argparse.ArgumentParser, *, multi: bool = False) -> None:
    from .solvers import SOLVERS
    from .solvers.reddiff import DATA_TERMS, INITS, LR_SCHEDULES, WEIGHTINGS, RedDiff

    d = RedDiff()
    g = p.add_argument_group("solver (defaults are each paper's; RED-diff's come from the prior's task preset "
                             "when it has one, see `reddiff list priors`)")
    if multi:
        g.add_argument("--solvers", default="reddiff,dps,pigdm,ddrm",
                       help=f"comma-separated solvers among {', '.join(SOLVERS)} (default: %(default)s)")
    else:
        g.add_argument("--solver", default="reddiff", choices=list(SOLVERS), help="the solver (default: %(default)s)")
    defaults = ", ".join(f"{name} {cls().steps}" for name, cls in SOLVERS.items())
    g.add_argument("--steps", type=_pos_int, default=None, help=f"steps (default: preset, else {defaults})")
    preset = "preset, else %s"
    g.add_argument("--lr", type=_pos_float, default=None, help=f"RED-diff learning rate (default: {preset % d.lr})")
    g.add_argument("--lam", type=_nonneg_float, default=None, help=f"RED-diff λ (default: {preset % d.lam})")
    g.add_argument("--weighting", default=None, choices=list(WEIGHTINGS),
                   help=f"RED-diff SNR weighting f (default: {preset % d.weighting})")
    g.add_argument("--obs-weight", type=_nonneg_float, default=None,
                   help=f"RED-diff data-term weight (default: {d.obs_weight})")
    g.add_argument("--init", default=None, choices=list(INITS),
                   help=f"RED-diff initial estimate (default: preset, else {d.init})")
    g.add_argument("--order", default=None, choices=["descending", "ascending", "random"],
                   help=f"RED-diff timestep order (default: {d.order})")
    g.add_argument("--optimizer", default=None, help=f"RED-diff torch.optim optimizer (default: {d.optimizer})")
    g.add_argument("--t-max", type=_nonneg_int, default=None,
                   help="RED-diff: largest timestep visited (default: preset, else T-1 = 999)")
    g.add_argument("--lr-schedule", default=None, choices=list(LR_SCHEDULES),
                   help=f"RED-diff learning-rate schedule (default: preset, else {d.lr_schedule})")
    g.add_argument("--data-term", default=None, choices=list(DATA_TERMS),
                   help="RED-diff data term: mean (both terms averaged, the reference normalisation) or paper "
                   f"(||y-A(mu)||^2/(2 sigma_y^2)) (default: {d.data_term})")
    g.add_argument("--eta", type=_nonneg_float, default=None,
                   help="η of DDIM-style updates (default: dps 1.0, pigdm 1.0, ddrm 0.85, ddim 0.0)")
    g.add_argument("--eta-b", type=_nonneg_float, default=None, help="DDRM η_b (default: 1.0)")
    g.add_argument("--zeta", type=_nonneg_float, default=None, help="DPS step size ζ (default: 1.0)")
    g.add_argument("--guidance-scale", type=_nonneg_float, default=None,
                   help="ΠGDM guidance multiplier; 1 is the exact ΠGDM likelihood score (default: 1.0)")
    g.add_argument("--no-clip-x0", action="store_const", const=False, default=None,
                   help="ΠGDM: do not clip its Tweedie estimate to the prior's data range ([-1, 1] for images); "
                   "the clip keeps small priors from diverging at high noise (default: clip)")


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("measurement")
    g.add_argument("--task", required=True, help="forward model, e.g. sr:4, inpaint-random:0.8, deblur-gauss, "
                   "jpeg:20, phase-retrieval; TASK+TASK composes (sr:4+inpaint-random:0.5); path/to/file.py:function "
                   "or module:function loads your own operator (see `reddiff list tasks`)")
    g.add_argument(
        "--sigma-y",
        type=_nonneg_float,
        default=0.0,
        help="measurement noise standard deviation in 0..1 pixel units, as papers report it (0.025 here is 0.05 "
        "in the [-1, 1] units used inside) (default: %(default)s)",
    )
    g.add_argument("--noise", default="gaussian", metavar="MODEL",
                   help="measurement noise: gaussian (level --sigma-y) or poisson:PEAK (photon count of a white "
                   "pixel; leave --sigma-y at 0) (default: %(default)s)")
    g.add_argument(
        "--seed",
        type=_nonneg_int,
        default=0,
        help="base seed; each image gets its own seeds derived from it and its file name, so results do not "
        "depend on the folder or the batch (default: %(default)s)",
    )


def _add_run_args(p: argparse.ArgumentParser) -> Any:
    run = p.add_argument_group("run")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return run


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``reddiff`` command."""
    from . import __version__

    parser = _Parser(
        prog="reddiff",
        description="Restore images and solve inverse problems with a diffusion prior using RED-diff "
        "(Mardani et al., ICLR 2024).",
    )
    parser.add_argument("--version", action="version", version=f"reddiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    solve = sub.add_parser(
        "solve",
        help="restore images: simulate a measurement of clean images (--input) or solve real ones (--measurement)",
        description="Restore images with RED-diff. With --input, a measurement of each clean image is simulated "
        "and PSNR/SSIM are reported; with --measurement, the given measurement images are solved. DIR receives, "
        "per image, DIR/<name>/estimate.png, measurement.png, grid.png and run.json.",
    )
    src = solve.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="CLEAN", help="clean image file or folder (a measurement is simulated)")
    src.add_argument("--measurement", metavar="Y", help="measurement image file or folder (from `reddiff degrade`)")
    solve.add_argument("--mask", metavar="M.png", help="inpainting mask for --measurement (white = observed)")
    solve.add_argument("--output", metavar="DIR", required=True, help="output folder")
    _add_measure_args(solve)
    _add_prior_args(solve)
    _add_solver_args(solve)
    run = _add_run_args(solve)
    run.add_argument("--batch-size", type=_pos_int, default=1, help="images per batch (default: %(default)s)")

    degrade = sub.add_parser(
        "degrade",
        help="simulate measurements of clean images (files that `solve --measurement` accepts)",
        description="Write, per image, DIR/<name>.png (the measurement as an image), DIR/<name>.mask.png for "
        "inpainting, and DIR/<name>.json. Solve them with `reddiff solve --measurement DIR/<name>.png "
        "--task TASK --seed SEED` (the same task and seed rebuild the same operator).",
    )
    degrade.add_argument("--input", metavar="CLEAN", required=True, help="clean image file or folder")
    degrade.add_argument("--output", metavar="DIR", required=True, help="output folder")
    _add_measure_args(degrade)
    degrade.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    lst = sub.add_parser("list", help="list tasks, priors or solvers", description="List what reddiff offers.")
    lst.add_argument("what", nargs="?", default="all", choices=["tasks", "priors", "solvers", "all"])
    lst.add_argument("--json", action="store_true", help="print JSON")

    ev = sub.add_parser(
        "eval",
        help="PSNR/SSIM of predicted images against references",
        description="Match images by file name (DIR/<name>.png or a solve output DIR/<name>/estimate.png) and "
        "report PSNR (dB) and SSIM per image and their means.",
    )
    ev.add_argument("--pred", metavar="DIR", required=True, help="predictions: a folder of images or solve output")
    ev.add_argument("--ref", metavar="DIR", required=True, help="reference images: a file or folder")
    ev.add_argument("--json", action="store_true", help="print JSON")
    _add_train_parser(sub)

    cmp_ = sub.add_parser(
        "compare",
        help="run several solvers on the same measurements and prior; grid and table",
        description="Simulate a measurement of each clean image (as `solve --input` does, same seeds) and restore "
        "it with each solver. Writes DIR/<name>/compare_grid.png (measurement, each solver, ground truth), "
        "DIR/<name>/<solver>.png and DIR/compare.json, and prints PSNR, SSIM, seconds, network evaluations and "
        "peak memory per solver. A solver that cannot use the task's operator is reported, not run.",
    )
    cmp_.add_argument("--input", metavar="CLEAN", required=True, help="clean image file or folder")
    cmp_.add_argument("--output", metavar="DIR", required=True, help="output folder")
    _add_measure_args(cmp_)
    _add_prior_args(cmp_)
    _add_solver_args(cmp_, multi=True)
    _add_run_args(cmp_)

    bench = sub.add_parser(
        "bench",
        help="time one solver step against a bare network forward; memory; images per second",
        description="Measure side by side, in one run: a bare network forward under no_grad and one step of "
        "RED-diff, DPS, ΠGDM and DDRM (median over --repeats steps after --warmup), their ratio to the forward, "
        "peak memory (CUDA: max allocated; CPU: peak RSS growth) and images per second, per batch size. Prints a "
        "table; --output writes JSON.",
    )
    bench.add_argument("--network", default="bundled", help="bundled, imagenet256-uncond or ffhq256 (those "
                       "architectures with random weights), or a checkpoint path (default: %(default)s)")
    bench.add_argument("--size", type=_pos_int, default=256, help="image side in pixels (default: %(default)s)")
    bench.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    bench.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    _add_speed_args(bench)
    bench.add_argument("--solvers", default="reddiff,dps,pigdm,ddrm", help="solver steps to time (default: "
                       "%(default)s)")
    bench.add_argument("--task", default="sr:4", help="measurement operator (default: %(default)s)")
    bench.add_argument("--warmup", type=_nonneg_int, default=2, help="untimed steps first (default: %(default)s)")
    bench.add_argument("--repeats", type=_pos_int, default=5, help="timed steps (default: %(default)s)")
    bench.add_argument("--output", metavar="JSON", default=None, help="write the report as JSON")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")

    demo = sub.add_parser(
        "demo",
        help="restore a held-out picture from several simulated measurements and show a before/after grid",
        description="With no arguments: the 256x256 centre crop of the held-out 'astronaut' picture, measured "
        "with sr:4 (noise 0.01), inpaint-random:0.8 (noiseless) and deblur-gauss (noise 0.01), restored with "
        "RED-diff and the bundled prior and its presets. Writes DIR/demo_grid.png (rows: measurement, RED-diff, "
        "ground truth) and DIR/demo.json, and prints PSNR/SSIM and seconds per task.",
    )
    demo.add_argument("--input", metavar="IMAGE", default=None, help="a clean image (default: the bundled "
                      "held-out astronaut crop)")
    demo.add_argument("--task", action="append", default=None, metavar="TASK",
                      help="a task to show; repeat for several (default: sr:4, inpaint-random:0.8, deblur-gauss)")
    demo.add_argument("--sigma-y", type=_nonneg_float, default=None,
                      help="noise in 0..1 pixel units for every task (default: 0.01 for sr and deblur, 0 for "
                      "inpainting)")
    demo.add_argument("--output", metavar="DIR", default="reddiff-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--prior", metavar="SPEC", default="bundled", help="the prior (default: %(default)s)")
    demo.add_argument("--prior-config", metavar="JSON", default=None, help="create_model arguments for --prior")
    demo.add_argument("--steps", type=_pos_int, default=None, help="RED-diff steps (default: the preset's)")
    demo.add_argument("--seed", type=_nonneg_int, default=0, help="seed (default: %(default)s)")
    demo.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    demo.add_argument("--json", action="store_true", help="print JSON instead of a table")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _add_train_parser(sub: Any) -> None:
    from .tools.train import DEFAULT_MODEL, TrainConfig

    d = TrainConfig(out="")
    tr = sub.add_parser(
        "train",
        help="train a diffusion prior (DDPM ε-prediction, ADM network) on random crops",
        description="Train the ADM network on random crops (flips, 90° rotations, mild rescaling) of the built-in "
        "offline image set or a folder, with AdamW, EMA weights and gradient clipping. DIR receives checkpoint.pt "
        "(continue with --resume), prior.safetensors + prior.json (the EMA weights; use them with --prior), "
        "loss.png and train.json. CUDA is used when present (bf16 autocast); on the CPU a run is deterministic "
        "for a given seed.",
    )
    tr.add_argument("--output", metavar="DIR", required=True, help="output folder")
    tr.add_argument("--data", default=d.data, help="'builtin' (offline scikit-image/scikit-learn pictures, the "
                    "held-out astronaut/chelsea/coffee excluded) or a folder of images (default: %(default)s)")
    tr.add_argument("--steps", type=_pos_int, default=d.steps, help="total steps (default: %(default)s)")
    tr.add_argument("--batch-size", type=_pos_int, default=d.batch_size, help="crops per step (default: %(default)s)")
    tr.add_argument("--crop", type=_pos_int, default=d.crop, help="crop side in pixels (default: %(default)s)")
    tr.add_argument("--lr", type=_pos_float, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    tr.add_argument("--weight-decay", type=_nonneg_float, default=d.weight_decay,
                    help="AdamW weight decay (default: %(default)s)")
    tr.add_argument("--warmup", type=_nonneg_int, default=d.warmup, help="warm-up steps (default: %(default)s)")
    tr.add_argument("--ema", type=_nonneg_float, default=d.ema_decay, help="EMA decay (default: %(default)s)")
    tr.add_argument("--grad-clip", type=_pos_float, default=d.grad_clip, help="gradient-norm clip (default: "
                    "%(default)s)")
    tr.add_argument("--seed", type=_nonneg_int, default=d.seed, help="seed (default: %(default)s)")
    tr.add_argument("--checkpoint-every", type=_pos_int, default=d.checkpoint_every,
                    help="steps between checkpoints (default: %(default)s)")
    tr.add_argument("--deadleaves", type=_nonneg_float, default=d.deadleaves,
                    help="fraction of crops from generated dead-leaves images (default: %(default)s)")
    tr.add_argument("--low-t", type=_nonneg_float, default=d.low_t,
                    help="fraction of each batch with timesteps below --low-t-max, more signal where the presets "
                         "work (default: %(default)s)")
    tr.add_argument("--low-t-max", type=_pos_int, default=d.low_t_max,
                    help="upper end of the low-noise timestep range (default: %(default)s)")
    tr.add_argument("--cooldown", type=_nonneg_int, default=d.cooldown,
                    help="linear learning-rate decay towards 0 over the last N steps (default: %(default)s)")
    tr.add_argument("--channels", type=_pos_int, default=DEFAULT_MODEL["num_channels"],
                    help="ADM base channels, a multiple of 32 (default: %(default)s)")
    tr.add_argument("--channel-mult", default=DEFAULT_MODEL["channel_mult"],
                    help="ADM channel multipliers per level (default: %(default)s)")
    tr.add_argument("--res-blocks", type=_pos_int, default=DEFAULT_MODEL["num_res_blocks"],
                    help="residual blocks per level (default: %(default)s)")
    tr.add_argument("--attention", default=DEFAULT_MODEL["attention_resolutions"],
                    help="attention resolutions, e.g. '8' (relative to a 64 px image; default: none)")
    tr.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    tr.add_argument("--resume", action="store_true", help="continue DIR/checkpoint.pt (raise --steps to go on)")
    tr.add_argument("--json", action="store_true", help="print the summary as JSON")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def derive_seed(seed: int, name: str, purpose: str) -> int:
    """A 63-bit seed for one image and one purpose (``operator``, ``solver``), from the base seed and the name."""
    digest = hashlib.sha256(f"{seed}/{name}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _device(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ReddiffError(f"unknown device {spec!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReddiffError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
    return dev


def _check_output_dir(path: str | Path) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ReddiffError(f"output path {out} is a file; give a folder")
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unique_stems(files: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ReddiffError(f"two inputs share the name {f.stem!r} ({seen[f.stem].name}, {f.name}); rename one")
        seen[f.stem] = f


def _progress(total: int, desc: str, disable: bool, position: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=disable, leave=False, position=position, file=sys.stderr,
                dynamic_ncols=True)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


# --------------------------------------------------------------------------------------------------------------
# solve
# --------------------------------------------------------------------------------------------------------------
def _solver_from_args(args: argparse.Namespace, preset: dict[str, Any] | None = None, name: str | None = None):
    """The solver with the user's settings; for RED-diff, those not given come from the prior's preset."""
    from .solvers import SOLVERS

    name = name or args.solver
    cls = SOLVERS[name]
    kwargs: dict[str, Any] = dict(preset or {}) if name == "reddiff" else {}
    for option, (field_name, owners) in SOLVER_OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if name not in owners:
            if getattr(args, "solvers", None):  # compare: an option of some other solver
                continue
            flag = "--" + option.replace("_", "-")
            raise ReddiffError(f"{flag} does not apply to --solver {name} (it applies to {', '.join(owners)})")
        kwargs[field_name] = value
    return cls(**kwargs)


def _operator_for(task: str, x_shape: tuple[int, int, int], seed: int, mask: Any = None):
    import torch

    from .operators import make_operator

    gen = torch.Generator().manual_seed(seed)
    if mask is not None:
        # a mask file defines the operator: any inpainting task becomes inpaint-mask with that mask
        if not task.split(":", 1)[0].strip().lower().startswith("inpaint") or "+" in task:
            raise ReddiffError(f"--mask is for inpainting tasks, not {task!r}")
        task = "inpaint-mask"
    op = make_operator(task, x_shape, generator=gen, mask=mask)
    return op, gen


def parse_noise(spec: str, sigma_y: float):
    """The noise model of ``--noise`` (see :func:`reddiff.noise.parse_noise`)."""
    from .noise import parse_noise as _parse

    return _parse(spec, sigma_y)


def _simulate_file(f: Path, args: argparse.Namespace, noise: Any, say: bool = True):
    """Load a clean image and simulate its measurement with the image's own operator seed.

    Returns:
        ``(file, x, operator, y, operator_seed)``.
    """
    import torch

    from .io import load_image

    notices: list[str] = []
    x = load_image(f, channels=3, notices=notices)
    for n in notices:
        if say:
            _say(f"reddiff: note: {n}")
    op_seed = derive_seed(args.seed, f.stem, "operator")
    op, gen = _operator_for(args.task, tuple(x.shape[1:]), op_seed)
    with torch.no_grad():
        y = noise.sample(op.A(x), gen)
    return f, x, op, y, op_seed


def _measurement_to_x_shape(task: str, y_img_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    from .operators import x_shape_from_measurement

    return x_shape_from_measurement(task, y_img_shape)


def _distributed(device):
    """``(rank, world_size, device)`` under ``torchrun`` (WORLD_SIZE > 1), else ``(0, 1, device)``.

    Initialises the process group: NCCL with one GPU per rank (LOCAL_RANK) on CUDA, gloo on the CPU.
    """
    import datetime
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=2))
    return rank, world, device


def _fingerprint(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _run_batch(solver, prior, batch, device, noise, args, notes: list[str]):
    """Solve one batch; on running out of memory, split it in halves (said in the output) or fail clearly."""
    import torch

    from .operators.stacked import StackedOperator
    from .solvers.base import Problem

    ops = [it["op"].to(device) for it in batch]
    op = ops[0] if len(ops) == 1 else StackedOperator(ops)
    y = torch.cat([it["y"] for it in batch]).to(device)
    gens = [torch.Generator(device="cuda" if device.type == "cuda" else "cpu").manual_seed(it["solver_seed"])
            for it in batch]
    step_bar = _progress(solver.steps, SOLVER_LABELS.get(solver.name, solver.name), args.no_progress)

    def on_step(info, bar=step_bar):
        bar.update(1)
        if (info.step % 10 == 0 or info.step == info.num_steps - 1) and "loss" in info.losses:
            bar.set_postfix(loss=f"{info.losses['loss']:.4g}", t=info.t)

    t0 = time.perf_counter()
    prior.num_evals = 0
    try:
        mu = solver(prior, Problem(y, op, noise.sigma_y, noise=noise), generator=gens, callback=on_step)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        step_bar.close()
        oom = isinstance(exc, torch.OutOfMemoryError | MemoryError) or "can't allocate memory" in str(exc)
        if not oom:
            raise
        del y, op, ops
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(batch) == 1:
            raise ReddiffError(f"out of memory on {device} for one {tuple(batch[0]['op'].x_shape)} image; use a "
                               "smaller image, --device cpu, or a smaller prior") from None
        half = len(batch) // 2
        notes.append(f"a batch of {len(batch)} did not fit in memory on {device}: split into {half} + "
                     f"{len(batch) - half} (use --batch-size {half} to avoid the retry)")
        _say(f"reddiff: note: {notes[-1]}")
        return (_run_batch(solver, prior, batch[:half], device, noise, args, notes)
                + _run_batch(solver, prior, batch[half:], device, noise, args, notes))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / len(batch)
    step_bar.close()
    mu = mu.cpu()
    return [(it, mu[i : i + 1], ops[i].cpu(), seconds, prior.num_evals) for i, it in enumerate(batch)]


def _cmd_solve(args: argparse.Namespace) -> int:

    from .io import list_images, load_image, write_json
    from .operators import load_mask
    from .presets import load_presets, preset_for
    from .prior import load_prior

    t_start = time.perf_counter()
    out_dir = _check_output_dir(args.output)
    simulate = args.input is not None
    if args.mask is not None and simulate:
        raise ReddiffError("--mask goes with --measurement; with --input use --task inpaint-mask:PATH")
    files = list_images(args.input if simulate else args.measurement)
    _unique_stems(files)
    _solver_from_args(args)  # validate the settings before any work
    noise = parse_noise(args.noise, 2.0 * args.sigma_y)  # 0..1 pixel units -> [-1, 1] units, converted once here
    sigma_y = noise.sigma_y
    rank, world, device = _distributed(_device(args.device))

    # load and check every input first, so a bad file fails (on every rank alike) before any output is written
    items: list[dict[str, Any]] = []
    for index, f in enumerate(files):
        notices: list[str] = []
        if simulate:
            x = load_image(f, channels=3, notices=notices)
            x_shape = tuple(x.shape[1:])
            y_img = None
        else:
            y_img = load_image(f, channels=None, notices=notices)
            x_shape = _measurement_to_x_shape(args.task, tuple(y_img.shape[1:]))
            x = None
        for n in notices:
            if index % world == rank:
                _say(f"reddiff: note: {n}")
        mask = load_mask(args.mask, x_shape) if args.mask else None
        op_seed = derive_seed(args.seed, f.stem, "operator")
        op, gen = _operator_for(args.task, x_shape, op_seed, mask)
        task = op.task  # canonical task string, the same for every image
        if index % world != rank:
            continue  # another rank's image
        if simulate:
            clean = op.A(x)
            y = noise.sample(clean, gen)
        else:
            y = op.image_to_y(_match_channels(y_img, op))
        items.append(
            {"file": f, "x": x, "y": y, "op": op, "op_seed": op_seed,
             "solver_seed": derive_seed(args.seed, f.stem, "solver")}
        )

    t_load = time.perf_counter()
    prior = load_prior(args.prior, args.prior_config, device=device, progress=not args.no_progress and rank == 0)
    prior.eval().configure(args.precision, args.channels_last, args.compile)
    prior_seconds = time.perf_counter() - t_load
    preset = preset_for(load_presets(prior.info.get("path")), task, sigma_y)
    solver = _solver_from_args(args, preset)

    # resume: an image whose run.json records the same settings is done; other settings need --overwrite
    results: list[dict[str, Any]] = []
    todo, clashes = [], []
    for it in items:
        it["settings"] = {
            "input_sha256": _file_sha256(it["file"]), "kind": "clean" if simulate else "measurement",
            "mask_sha256": _file_sha256(Path(args.mask)) if args.mask else None, "task": it["op"].task,
            "sigma_y": args.sigma_y, "noise": noise.params(), "seed": args.seed, "solver": solver.to_dict(),
            "prior_sha256": prior.info.get("sha256"), "runtime": prior.runtime,
        }
        it["fingerprint"] = _fingerprint(it["settings"])
        done = out_dir / it["file"].stem / RUN_JSON
        if done.is_file() and not args.overwrite:
            try:
                old = json.loads(done.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("settings_sha256") == it["fingerprint"]:
                results.append({**old.get("record", {}), "skipped": True})
                continue
            clashes.append(it["file"].stem)
        todo.append(it)
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise ReddiffError(f"outputs in {out_dir} for {', '.join(clashes[:3])}{more} were made with other settings; "
                           "pass --overwrite to replace them or choose another --output")
    if results and not args.json:
        _say(f"reddiff: {len(results)} image(s) already done with these settings: skipped")

    # batches of images whose x and y shapes agree
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for it in todo:
        groups.setdefault((tuple(it["op"].x_shape), tuple(it["y"].shape)), []).append(it)
    batches = [g[i : i + args.batch_size] for g in groups.values() for i in range(0, len(g), args.batch_size)]

    notes: list[str] = []
    img_bar = _progress(len(todo), "images", args.no_progress or len(todo) <= 1, position=1)
    for batch in batches:
        for it, mu, op, seconds, evals in _run_batch(solver, prior, batch, device, noise, args, notes):
            results.append(_write_outputs(it, mu, op, out_dir, args, solver, prior, seconds, evals, noise, preset))
            img_bar.update(1)
    img_bar.close()

    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, results)
        results = sorted((r for part in gathered for r in part), key=lambda r: r["name"])
        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return 0
    total = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "task": task,
        "solver": solver.to_dict(),
        "prior": {k: prior.info.get(k) for k in ("name", "path", "sha256")},
        "images": results,
        "outputs": [r["outputs"]["estimate"] for r in results],
        "seconds": round(total, 3),
        "prior_load_seconds": round(prior_seconds, 3),
        "processes": world,
        "skipped": sum(1 for r in results if r.get("skipped")),
        "notes": notes,
    }
    for key in ("psnr", "ssim"):
        vals = [r[key] for r in results if r.get(key) is not None]
        summary[key] = (sum(vals) / len(vals)) if vals else None
    if len(results) > 1:
        write_json(summary, out_dir / "metrics.json")
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_solve_table(results, summary)
    return 0


def _match_channels(y_img, op):
    """Give a measurement image the channel count the operator's measurement has (RGB <-> grey)."""
    import torch

    probe = op.y_to_image(op.A(torch.zeros((1, *op.x_shape))))
    want, got = probe.shape[1], y_img.shape[1]
    if want == got:
        return y_img
    if want == 1:
        return y_img.mean(dim=1, keepdim=True)
    return y_img.expand(-1, want, -1, -1)


def _write_outputs(it, mu, op, out_dir, args, solver, prior, seconds, evals, noise, preset) -> dict[str, Any]:
    """Write one image's estimate, measurement, grid and run.json (last); return its summary record."""
    import torch

    from . import __version__ as version
    from .io import make_grid, save_image, to_unit, write_json
    from .metrics import psnr, ssim

    f: Path = it["file"]
    d = out_dir / f.stem
    d.mkdir(parents=True, exist_ok=True)
    est = mu.clamp(-1, 1)
    meas_img = op.y_to_image(it["y"]).clamp(-1, 1)
    outputs = {
        "estimate": str(save_image(est, d / ESTIMATE)),
        "measurement": str(save_image(meas_img, d / MEASUREMENT)),
    }
    mask = getattr(op, "mask", None)
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        outputs["mask"] = str(save_image(mask.float()[None, None] * 2 - 1, d / MASK))
    tiles, labels = [meas_img, est], ["measurement", SOLVER_LABELS.get(solver.name, solver.name)]
    record: dict[str, Any] = {"psnr": None, "ssim": None}
    if it["x"] is not None:
        x = it["x"]
        tiles.append(x)
        labels.append("ground truth")
        # metrics of the 8-bit estimate as saved, so that `reddiff eval` on the files gives the same numbers
        a, b = _quantize(to_unit(est.double())), to_unit(x.double())
        record["psnr"] = float(psnr(a, b)[0])
        record["ssim"] = float(ssim(a, b)[0]) if min(x.shape[-2:]) > 11 else None
        # the naive baseline the solver starts from, for context
        if callable(getattr(op, "A_dagger", None)):
            base = op.A_dagger(it["y"]).clamp(-1, 1)
            record["psnr_pinv"] = float(psnr(_quantize(to_unit(base.double())), b)[0])
    outputs["grid"] = str(save_image(make_grid(tiles, labels), d / GRID))
    record.update({"name": f.stem, "input": str(f), "seconds": round(seconds, 4), "network_evals": evals})
    run = {
        "reddiff_version": version,
        "command": ["reddiff", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("reddiff") else None,
        "input": {"path": str(f), "sha256": it["settings"]["input_sha256"], "kind": it["settings"]["kind"]},
        "prior": prior.info,
        "task": {"task": op.task, "params": op.params(), "x_shape": list(op.x_shape),
                 "y_shape": list(op.y_shape)},
        "sigma_y": {"pixel_0_1": args.sigma_y, "internal_-1_1": noise.sigma_y},
        "noise": noise.params(),
        "solver": solver.to_dict(),
        "preset": preset or None,
        "seeds": {"base": args.seed, "operator": it["op_seed"], "solver": it["solver_seed"]},
        "device": str(args.device),
        "runtime": prior.runtime,
        "timings": {"solve_seconds": round(seconds, 4)},
        "network_evals": evals,
        "metrics": {k: record.get(k) for k in ("psnr", "ssim", "psnr_pinv") if k in record},
        "outputs": outputs,
        "settings": it["settings"],
        "settings_sha256": it["fingerprint"],
    }
    outputs["run"] = str(d / RUN_JSON)
    record["outputs"] = outputs
    run["record"] = record
    write_json(run, d / RUN_JSON)  # last: its presence marks a finished image
    return record


def _quantize(x01):
    """Round [0, 1] values to the 8-bit levels an image file stores."""
    return (x01 * 255).round() / 255


def _print_solve_table(results: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"{'image':<24} {'PSNR dB':>8} {'SSIM':>7} {'pinv dB':>8} {'seconds':>8}  estimate")
    for r in results:
        p = f"{r['psnr']:.2f}" if r.get("psnr") is not None else "-"
        s = f"{r['ssim']:.4f}" if r.get("ssim") is not None else "-"
        b = f"{r['psnr_pinv']:.2f}" if r.get("psnr_pinv") is not None else "-"
        print(f"{r['name'][:24]:<24} {p:>8} {s:>7} {b:>8} {r['seconds']:>8.2f}  {r['outputs']['estimate']}")
    if len(results) > 1 and summary.get("psnr") is not None:
        print(f"{'mean':<24} {summary['psnr']:>8.2f} {summary['ssim'] or 0:>7.4f}")


# --------------------------------------------------------------------------------------------------------------
# degrade
# --------------------------------------------------------------------------------------------------------------
def _cmd_degrade(args: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .io import list_images, save_image, write_json

    out_dir = _check_output_dir(args.output)
    files = list_images(args.input)
    _unique_stems(files)
    if not args.overwrite:
        taken = [f.stem for f in files if (out_dir / f"{f.stem}.png").exists() or (out_dir / f"{f.stem}.json").exists()]
        if taken:
            raise ReddiffError(f"outputs exist in {out_dir} for {', '.join(taken[:3])}; pass --overwrite")
    sigma_y = 2.0 * args.sigma_y
    noise = parse_noise(args.noise, sigma_y)
    prepared = [(f, op, y, op_seed) for f, _, op, y, op_seed in (_simulate_file(f, args, noise) for f in files)]
    written = []
    for f, op, y, op_seed in prepared:
        outs = {"measurement": str(save_image(op.y_to_image(y).clamp(-1, 1), out_dir / f"{f.stem}.png"))}
        mask = getattr(op, "mask", None)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            outs["mask"] = str(save_image(mask.float()[None, None] * 2 - 1, out_dir / f"{f.stem}.mask.png"))
        record = {
            "reddiff_version": __version__,
            "input": str(f),
            "task": {"task": op.task, "params": op.params()},
            "sigma_y": {"pixel_0_1": args.sigma_y, "internal_-1_1": noise.sigma_y},
            "noise": noise.params(),
            "seeds": {"base": args.seed, "operator": op_seed},
            "outputs": outs,
            "solve_with": f"reddiff solve --measurement {outs['measurement']} --task {op.task} --seed {args.seed}"
            + (f" --mask {outs['mask']}" if "mask" in outs else "") + f" --sigma-y {args.sigma_y}"
            + (f" --noise {args.noise}" if args.noise != "gaussian" else ""),
        }
        outs["record"] = str(write_json(record, out_dir / f"{f.stem}.json"))
        written.append(outs)
        print(outs["measurement"])
    return 0


# --------------------------------------------------------------------------------------------------------------
# list
# --------------------------------------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> int:
    from .networks.hub import NAMED_PRIORS, cache_dir
    from .operators import TASKS
    from .solvers import SOLVERS

    data: dict[str, Any] = {}
    if args.what in ("tasks", "all"):
        data["tasks"] = dict(TASKS)
    if args.what in ("priors", "all"):
        from .networks.hub import BUNDLED, bundled_weights
        from .presets import load_presets

        bundled = bundled_weights()
        presets = load_presets(bundled) if bundled.is_file() else None
        data["priors"] = {
            BUNDLED: {
                "description": "small natural-image prior shipped with reddiff (docs/MODEL_CARD.md); the default",
                "file": str(bundled),
                "cached": bundled.is_file(),
                "sources": ["package data"],
                "presets": (presets or {}).get("tasks", {}),
                "presets_provenance": (presets or {}).get("provenance"),
            }
        }
        data["priors"].update({
            name: {
                "description": p.description,
                "file": p.filename,
                "cached": (cache_dir() / p.filename).is_file(),
                "sources": list(p.urls),
            }
            for name, p in NAMED_PRIORS.items()
        })
    if args.what in ("solvers", "all"):
        data["solvers"] = {name: cls().to_dict() for name, cls in SOLVERS.items()}
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if "tasks" in data:
        print("tasks:")
        for k, v in data["tasks"].items():
            print(f"  {k:<28} {v}")
        print(f"  {'TASK+TASK':<28} composite: the parts applied in order, e.g. sr:4+inpaint-random:0.5")
        print(f"  {'file.py:function':<28} your own operator: function((C, H, W)) returns an Operator or a "
              "differentiable callable (also module:function)")
    if "priors" in data:
        print(f"priors (cache: {cache_dir()}):")
        for k, v in data["priors"].items():
            print(f"  {k:<28} {v['description']}{'  [cached]' if v['cached'] else ''}")
            for family, entries in (v.get("presets") or {}).items():
                for e in entries:
                    bound = "any sigma_y" if e.get("max_sigma_y") is None else f"sigma_y <= {e['max_sigma_y']:g}"
                    settings = "  ".join(f"{k} {val}" for k, val in e.items() if k not in ("max_sigma_y", "note"))
                    print(f"  {'':<28}   preset {family:<16} {bound:<18} {settings}")
    if "solvers" in data:
        print("solvers:")
        for k, v in data["solvers"].items():
            fields = ", ".join(f"{a}={b}" for a, b in v.items() if a != "solver")
            print(f"  {k:<28} {fields}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------------------------
def _cmd_eval(args: argparse.Namespace) -> int:
    from .io import IMAGE_SUFFIXES, list_images, load_image, to_unit
    from .metrics import psnr, ssim

    refs = list_images(args.ref)
    pred_dir = Path(args.pred)
    if not pred_dir.is_dir():
        raise ReddiffError(f"--pred must be a folder, got {pred_dir}")
    rows = []
    missing = []
    for r in refs:
        cands = [pred_dir / r.stem / ESTIMATE] + [pred_dir / f"{r.stem}{s}" for s in IMAGE_SUFFIXES]
        p = next((c for c in cands if c.is_file()), None)
        if p is None:
            missing.append(r.stem)
            continue
        a, b = to_unit(load_image(p).double()), to_unit(load_image(r).double())
        if a.shape != b.shape:
            raise ReddiffError(f"{p} is {tuple(a.shape[-2:])} but {r} is {tuple(b.shape[-2:])}; sizes must match")
        rows.append({
            "name": r.stem, "pred": str(p), "ref": str(r),
            "psnr": float(psnr(a, b)[0]), "ssim": float(ssim(a, b)[0]) if min(a.shape[-2:]) > 11 else None,
        })
    if missing:
        raise ReddiffError(f"no prediction in {pred_dir} for {', '.join(missing[:3])}"
                           f"{' and more' if len(missing) > 3 else ''} (looked for NAME.png and NAME/{ESTIMATE})")
    mean_psnr = sum(r["psnr"] for r in rows) / len(rows)
    ssims = [r["ssim"] for r in rows if r["ssim"] is not None]
    out = {"images": rows, "psnr": mean_psnr, "ssim": sum(ssims) / len(ssims) if ssims else None}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{'image':<24} {'PSNR dB':>8} {'SSIM':>7}")
        for r in rows:
            ssim_value = r["ssim"] if r["ssim"] is not None else float("nan")
            print(f"{r['name'][:24]:<24} {r['psnr']:>8.2f} {ssim_value:>7.4f}")
        print(f"{'mean':<24} {mean_psnr:>8.2f} {out['ssim'] if out['ssim'] is not None else float('nan'):>7.4f}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------------------
def _cmd_train(args: argparse.Namespace) -> int:
    from .tools.train import DEFAULT_MODEL, TrainConfig, train

    model = dict(DEFAULT_MODEL)
    model.update(num_channels=args.channels, channel_mult=args.channel_mult, num_res_blocks=args.res_blocks,
                 attention_resolutions=args.attention)
    if model["attention_resolutions"]:
        model["num_head_channels"] = 32
    cfg = TrainConfig(
        out=args.output, data=args.data, steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, ema_decay=args.ema, grad_clip=args.grad_clip,
        seed=args.seed, checkpoint_every=args.checkpoint_every, deadleaves=args.deadleaves, low_t=args.low_t,
        low_t_max=args.low_t_max, cooldown=args.cooldown, device=args.device, model=model,
    )
    summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s, final loss {summary['final_loss']:.4f}")
        print(f"prior: {summary['export']}  (use --prior {summary['export']})")
        if summary["loss_curve"]:
            print(f"loss curve: {summary['loss_curve']}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------------------------
def _cmd_compare(args: argparse.Namespace) -> int:
    import torch

    from .errors import SolverError
    from .io import list_images, make_grid, save_image, to_unit, write_json
    from .metrics import psnr, ssim
    from .presets import load_presets, preset_for
    from .prior import load_prior
    from .profiling import PeakMemory
    from .solvers import SOLVERS
    from .solvers.base import Problem

    out_dir = _check_output_dir(args.output)
    names = [n.strip() for n in args.solvers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOLVERS]
    if unknown or not names:
        raise ReddiffError(f"unknown solver(s) {', '.join(unknown) or '(none)'}; accepted: {', '.join(SOLVERS)}")
    for n in names:
        _solver_from_args(args, name=n)  # validate settings before any work
    files = list_images(args.input)
    _unique_stems(files)
    if not args.overwrite:
        taken = [f.stem for f in files if (out_dir / f.stem / "compare_grid.png").exists()]
        if taken:
            raise ReddiffError(f"outputs exist in {out_dir} for {', '.join(taken[:3])}; pass --overwrite")
    sigma_y = 2.0 * args.sigma_y
    device = _device(args.device)
    noise = parse_noise(args.noise, sigma_y)
    sigma_y = noise.sigma_y
    prepared = [(f, x, y, op) for f, x, op, y, _ in (_simulate_file(f, args, noise) for f in files)]
    prior = load_prior(args.prior, args.prior_config, device=device, progress=not args.no_progress).eval()
    prior.configure(args.precision, args.channels_last, args.compile)
    presets = load_presets(prior.info.get("path"))
    report: dict[str, Any] = {"task": prepared[0][3].task, "sigma_y": args.sigma_y, "prior": prior.info.get("name"),
                              "images": []}
    for f, x, y, op in prepared:
        op = op.to(device)
        rows, tiles, labels = [], [op.y_to_image(y).clamp(-1, 1)], ["measurement"]
        b = to_unit(x.double())
        for n in names:
            solver = _solver_from_args(args, preset_for(presets, op.task, sigma_y) if n == "reddiff" else None,
                                       name=n)
            label = SOLVER_LABELS.get(n, n)
            gen = torch.Generator(device="cuda" if device.type == "cuda" else "cpu").manual_seed(
                derive_seed(args.seed, f.stem, "solver"))
            bar = _progress(solver.steps, label, args.no_progress)
            prior.num_evals = 0
            try:
                with PeakMemory(device) as mem:
                    t0 = time.perf_counter()
                    mu = solver(prior, Problem(y.to(device), op, sigma_y, noise=noise), generator=[gen],
                                callback=lambda info, bar=bar: bar.update(1))
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    seconds = time.perf_counter() - t0
            except SolverError as exc:
                bar.close()
                rows.append({"solver": n, "error": str(exc)})
                continue
            bar.close()
            est = mu.clamp(-1, 1).cpu()
            a = _quantize(to_unit(est.double()))
            save_image(est, out_dir / f.stem / f"{n}.png")
            tiles.append(est)
            labels.append(label)
            rows.append({"solver": n, "psnr": float(psnr(a, b)[0]),
                         "ssim": float(ssim(a, b)[0]) if min(x.shape[-2:]) >= 11 else None,
                         "seconds": round(seconds, 3), "network_evals": prior.num_evals,
                         "peak_memory_mb": round(mem.peak_mb, 1), "settings": solver.to_dict()})
        tiles.append(x)
        labels.append("ground truth")
        grid = save_image(make_grid(tiles, labels), out_dir / f.stem / "compare_grid.png")
        report["images"].append({"name": f.stem, "grid": str(grid), "results": rows})
    write_json(report, out_dir / "compare.json")
    if args.json:
        print(json.dumps(report))
        return 0
    for img in report["images"]:
        print(f"{img['name']}  ({report['task']}, sigma_y {args.sigma_y})  grid: {img['grid']}")
        print(f"  {'solver':<9} {'PSNR dB':>8} {'SSIM':>7} {'seconds':>8} {'NFEs':>6} {'peak MB':>8}")
        for r in img["results"]:
            if "error" in r:
                print(f"  {r['solver']:<9} n/a: {r['error']}")
                continue
            ssim_text = f"{r['ssim']:.4f}" if r["ssim"] is not None else "-"
            print(f"  {r['solver']:<9} {r['psnr']:>8.2f} {ssim_text:>7} {r['seconds']:>8.2f} "
                  f"{r['network_evals']:>6} {r['peak_memory_mb']:>8.1f}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------------------------
def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, format_table, run_bench
    from .io import write_json
    from .solvers import SOLVERS

    try:
        batches = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise ReddiffError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    if any(b < 1 for b in batches):
        raise ReddiffError("--batch-sizes must be >= 1")
    solvers = tuple(n.strip() for n in args.solvers.split(",") if n.strip())
    unknown = [n for n in solvers if n not in SOLVERS]
    if unknown:
        raise ReddiffError(f"unknown solver(s) {', '.join(unknown)}; accepted: {', '.join(SOLVERS)}")
    cfg = BenchConfig(network=args.network, size=args.size, batch_sizes=batches, device=str(_device(args.device)),
                      precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                      solvers=solvers, task=args.task, warmup=args.warmup, repeats=args.repeats)
    report = run_bench(cfg)
    if args.output:
        write_json(report, args.output)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


# --------------------------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------------------------
#: (task, noise in 0..1 pixel units) shown by `reddiff demo` without --task.
DEMO_TASKS = (("sr:4", 0.01), ("inpaint-random:0.8", 0.0), ("deblur-gauss", 0.01))


def demo_image_path() -> Path:
    """The bundled held-out demo picture (256x256 centre crop of scikit-image's astronaut)."""
    return Path(__file__).resolve().parent / "assets" / "astronaut256.png"


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .io import load_image, make_grid, save_image, write_json
    from .pipeline import restore
    from .prior import load_prior

    out_dir = _check_output_dir(args.output)
    src = Path(args.input) if args.input else demo_image_path()
    notices: list[str] = []
    x = load_image(src, channels=3, notices=notices)
    for n in notices:
        _say(f"reddiff: note: {n}")
    if args.task:
        tasks = [(t, args.sigma_y if args.sigma_y is not None else 0.0) for t in args.task]
    else:
        tasks = [(t, args.sigma_y if args.sigma_y is not None else s) for t, s in DEMO_TASKS]
    from .operators import make_operator

    for task, _ in tasks:  # every task string checked before any work
        make_operator(task, tuple(x.shape[1:]), generator=torch.Generator().manual_seed(0))
    device = _device(args.device)
    prior = load_prior(args.prior, args.prior_config, device=device, progress=not args.no_progress).eval()
    x = x.to(device)
    rows, results = [], []
    for i, (task, noise) in enumerate(tasks):
        bar = _progress(0, f"{task}", args.no_progress)

        def on_step(info, bar=bar):
            if bar.total != info.num_steps:
                bar.reset(total=info.num_steps)
            bar.update(1)

        r = restore(prior, x, task, 2.0 * noise, seed=args.seed + i, callback=on_step, steps=args.steps)
        bar.close()
        rows.append(make_grid([r.measurement_image, r.estimate, r.clean],
                              [f"{r.task} y", f"RED-diff {r.psnr:.2f} dB", "ground truth"]))
        results.append({"task": r.task, "sigma_y": noise, "psnr": r.psnr, "ssim": r.ssim,
                        "psnr_pinv": r.psnr_measurement, "seconds": round(r.seconds, 2), "solver": r.solver,
                        "preset": r.preset})
    width = max(r.shape[2] for r in rows)
    grid = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[2]), value=1.0) for r in rows], dim=1)
    grid_path = save_image(grid, out_dir / "demo_grid.png")
    summary = {"image": str(src), "prior": {k: prior.info.get(k) for k in ("name", "path", "sha256")},
               "results": results, "grid": str(grid_path)}
    write_json(summary, out_dir / "demo.json")
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{'task':<22} {'noise':>6} {'PSNR dB':>8} {'SSIM':>7} {'A+y dB':>7} {'seconds':>8}")
    for r in results:
        pinv = f"{r['psnr_pinv']:.2f}" if r["psnr_pinv"] is not None else "-"
        ssim_text = f"{r['ssim']:.4f}" if r["ssim"] is not None else "-"
        print(f"{r['task']:<22} {r['sigma_y']:>6g} {r['psnr']:>8.2f} {ssim_text:>7} {pinv:>7} {r['seconds']:>8.1f}")
    print(f"grid: {grid_path}")
    return 0


# --------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``reddiff`` command with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"solve": _cmd_solve, "degrade": _cmd_degrade, "list": _cmd_list, "eval": _cmd_eval,
                "train": _cmd_train, "demo": _cmd_demo, "compare": _cmd_compare,
                "bench": _cmd_bench}
    previous = _stop_on_sigterm()
    try:
        return handlers[args.command](args)
    except ReddiffError as exc:
        print(f"reddiff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reddiff: interrupted; finished images are complete, rerun the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: unwind (temporary files are removed) and exit."""


def _stop_on_sigterm():
    """Turn SIGTERM into an exception so an interrupted run unwinds cleanly (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)
