"""Speed benchmark: `reddiff bench` over several settings, one table each, and one JSON with them all.

Each table measures, side by side in one run, a bare network forward and one step of RED-diff, DPS, ΠGDM and DDRM
(median over timed steps after warm-up), their ratios, peak memory and images per second. Goals (figures, not
tests): a RED-diff step at most 1.05x a bare forward, its peak memory at most 1.1x a bare forward's, and at most
0.45x a DPS step, at batch 1 and 8.

    python benchmarks/speed.py                       # CPU: the bundled prior at 256x256, fp32 and bf16
    python benchmarks/speed.py --networks ffhq256,imagenet256-uncond --size 256 --device cuda --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import add_overwrite, refuse_existing

from reddiff.tools.bench import BenchConfig, format_table, run_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default="bundled")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/speed.json")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out)

    reports = []
    for network in args.networks.split(","):
        for precision in args.precisions.split(","):
            cfg = BenchConfig(network=network, size=args.size,
                              batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), device=args.device,
                              precision=precision, channels_last=args.channels_last, compile=args.compile,
                              warmup=args.warmup, repeats=args.repeats)
            report = run_bench(cfg)
            reports.append(report)
            print(format_table(report), end="\n\n", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reports, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
