"""How few steps DPS and ΠGDM can take with a prior before their result stops being related to the measurement.

On the three sweep crops of *training* pictures (china, rocket, flower; 96 px, averaged down to 48 px so the run is
short), for ``sr:4`` (sigma_y 0.01), ``inpaint-random:0.8`` (0) and ``deblur-gauss`` (0.01), each sampler runs with
each step count; the table gives PSNR and the measurement fit ``||y - A(x)|| / ||y - A(0)||``
(:func:`reddiff.experiment.measurement_fit`: 1 or more means the estimate fits no better than a blank image). The
samplers' ``min_steps`` (below which they say so) were read from this table. Not a timed test.

    python benchmarks/few_steps.py --out benchmarks/results/few_steps.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from common import add_overwrite, refuse_existing
from sweep_presets import crops

from reddiff import load_prior
from reddiff.experiment import measurement_fit, restore
from reddiff.solvers import SOLVERS

TASKS = (("sr:4", 0.01), ("inpaint-random:0.8", 0.0), ("deblur-gauss", 0.01))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="bundled")
    parser.add_argument("--solvers", default="dps,pigdm")
    parser.add_argument("--steps", default="10,20,50,100", help="comma-separated step counts")
    parser.add_argument("--out", default="benchmarks/results/few_steps.json")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out)

    prior = load_prior(args.prior, progress=False).eval()
    images = [(name, F.avg_pool2d(x, 2)) for (name, _, _), x in crops(96, "sweep")]
    rows = []
    print(f"{'solver':<7} {'task':<20} {'steps':>5}  " + "  ".join(f"{n:>14}" for n, _ in images), flush=True)
    for solver_name in args.solvers.split(","):
        for task, noise in TASKS:
            for steps in (int(s) for s in args.steps.split(",")):
                cells = []
                for i, (name, x) in enumerate(images):
                    r = restore(prior, x, task, 2 * noise, seed=1000 + i, solver=SOLVERS[solver_name](steps=steps))
                    fit = measurement_fit(r.operator, r.y, r.estimate)
                    rows.append({"solver": solver_name, "task": task, "sigma_y": noise, "steps": steps, "image": name,
                                 "psnr": r.psnr, "fit": fit})
                    cells.append(f"{r.psnr:5.1f} dB {fit:5.2f}")
                print(f"{solver_name:<7} {task:<20} {steps:>5}  " + "  ".join(f"{c:>14}" for c in cells), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prior": args.prior, "size": 48, "torch_threads": torch.get_num_threads(),
                               "columns": "psnr (dB) and fit ||y - A(x)|| / ||y - A(0)|| per crop", "rows": rows},
                              indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
