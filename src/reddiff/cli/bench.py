"""``reddiff bench``: one solver step against a bare network forward, memory and images per second."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ReddiffError
from .common import NONNEG_INT, POS_INT, add_runtime_args, device_from, parse_list

NAME = "bench"
RANK = 8
HELP = "time one solver step against a bare network forward; memory; images per second"
DESCRIPTION = ("Measure side by side, in one run: a bare network forward under no_grad (the network alone, without "
               "the prior's prediction-type conversions) and one step of RED-diff, "
               "DPS, ΠGDM and DDRM (median over --repeats steps after --warmup), their ratio to the forward (paired: "
               "the median of each step's time over a bare forward timed right after it, so drift of a shared "
               "machine cancels), peak "
               "memory (CUDA: max allocated; CPU: peak RSS growth) and images per second, per batch size. Prints a "
               "table; --output writes JSON.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", default="bundled", help="bundled, imagenet256-uncond or ffhq256 (those architectures "
                   "with random weights), sd-1.5 or sd-2.1 (Stable Diffusion's latent UNet and autoencoder with random "
                   "weights: adds the decoder's forward and VJP and RED-diff's direct and split steps), or any "
                   "--prior spec: a checkpoint path, diffusers:FOLDER, sd:FOLDER, file.py:make "
                   "(default: %(default)s)")
    p.add_argument("--size", type=POS_INT, default=256, help="image side in pixels (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    add_runtime_args(p)
    p.add_argument("--solvers", default="reddiff,dps,pigdm,ddrm", help="solver steps to time (default: %(default)s)")
    p.add_argument("--task", default="sr:4", help="measurement operator (default: %(default)s)")
    p.add_argument("--warmup", type=NONNEG_INT, default=2, help="untimed steps first (default: %(default)s)")
    p.add_argument("--repeats", type=POS_INT, default=5, help="timed steps (default: %(default)s)")
    p.add_argument("--output", metavar="FILE.json", default=None, help="write the report as JSON to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..io import dumps, write_json
    from ..solvers import SOLVERS
    from ..tools.bench import BenchConfig, format_table, run_bench

    try:
        batches = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise ReddiffError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    if any(b < 1 for b in batches):
        raise ReddiffError("--batch-sizes must be >= 1")
    solvers = tuple(parse_list(args.solvers, list(SOLVERS), "solver"))
    if args.output is not None and Path(args.output).is_dir():
        raise ReddiffError(f"--output {args.output} is a folder; give the path of a JSON file, e.g. "
                           f"{Path(args.output) / 'bench.json'}")
    cfg = BenchConfig(network=args.network, size=args.size, batch_sizes=batches, device=str(device_from(args.device)),
                      precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                      solvers=solvers, task=args.task, warmup=args.warmup, repeats=args.repeats)
    report = run_bench(cfg)
    if args.output:
        write_json(report, args.output)
    print(dumps(report) if args.json else format_table(report))
    return 0
