"""Quality against steps: PSNR against network evaluations (NFE) for RED-diff and each sampler with a prior.

On held-out tiles (astronaut, chelsea, coffee, grace_hopper, 48 px centres of the 64 px tiles of
``evaluate_heldout.py``; never swept), for ``sr:4`` (σ_y 0.01), ``inpaint-random:0.8`` (0) and ``deblur-gauss``
(0.01): RED-diff with the prior's preset at 10, 20, 50, 100, 200 and 1000 steps (one network evaluation per step),
RED-diff with the paper's settings at 1000 steps, and DPS, ΠGDM and DDRM at 10 … 200 steps (``--sampler-nfes``).
The question the table answers: how close does the preset come at 50 NFE to the best 1000-NFE RED-diff result?
Writes JSON and a plot (``docs/nfe_curves.png``). Not a timed test.

    python benchmarks/nfe_curves.py --out benchmarks/results/nfe_curves.json --plot docs/nfe_curves.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import add_overwrite, refuse_existing
from evaluate_heldout import write_sets

from reddiff import load_prior
from reddiff.experiment import restore
from reddiff.io import load_image
from reddiff.solvers import SOLVERS, RedDiff
from reddiff.tools.presets import preset_for_prior

TASKS = (("sr:4", 0.01), ("inpaint-random:0.8", 0.0), ("deblur-gauss", 0.01))
NFES = (10, 20, 50, 100, 200, 1000)
SAMPLERS = ("dps", "pigdm", "ddrm")
#: the samplers' step counts (``--sampler-nfes``; 1000 steps of DPS and ΠGDM cost 2000 network passes each)
SAMPLER_NFES = (10, 20, 50, 100, 200)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="bundled")
    parser.add_argument("--images", default="astronaut_00,coffee_01", help="held-out tile names (of 20)")
    parser.add_argument("--work", default="/tmp/reddiff-nfe")
    parser.add_argument("--out", default="benchmarks/results/nfe_curves.json")
    parser.add_argument("--plot", default="docs/nfe_curves.png")
    parser.add_argument("--sampler-nfes", default=",".join(map(str, SAMPLER_NFES)),
                        help="step counts of DPS, ΠGDM and DDRM (default: %(default)s; add 1000 for the full curve)")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out, args.plot)

    prior = load_prior(args.prior, progress=False).eval()
    tiles = write_sets(Path(args.work))["heldout20"]
    images = [(n, load_image(tiles / f"{n}.png")[..., 8:56, 8:56]) for n in args.images.split(",")]
    t0 = time.perf_counter()
    rows = []
    sampler_nfes = [int(n) for n in args.sampler_nfes.split(",")]

    def run(series: str, task: str, noise: float, nfe: int, make) -> None:
        vals = [restore(prior, x, task, 2 * noise, seed=1000 + i, solver=make()).psnr
                for i, (_, x) in enumerate(images)]
        rows.append({"series": series, "task": task, "sigma_y": noise, "nfe": nfe, "psnr": float(np.mean(vals)),
                     "per_image": vals})
        print(f"{series:<16} {task:<20} {nfe:>5} NFE  {np.mean(vals):6.2f} dB", flush=True)

    for task, noise in TASKS:
        preset = preset_for_prior(prior, task, 2 * noise)
        for nfe in NFES:
            run("RED-diff preset", task, noise, nfe, lambda n=nfe, p=preset: RedDiff(**{**p, "steps": n}))
        paper_lr = 0.5 if task.startswith("inpaint") else 0.1  # the paper's lr for inpainting, and its default
        run("RED-diff paper", task, noise, 1000, lambda lr=paper_lr: RedDiff(lr=lr))
        for name in SAMPLERS:
            for nfe in sampler_nfes:
                run(SOLVERS[name].label, task, noise, nfe, lambda n=nfe, c=SOLVERS[name]: c(steps=n))

    summary = []
    for task, _ in TASKS:
        mine = {r["nfe"]: r["psnr"] for r in rows if r["task"] == task and r["series"] == "RED-diff preset"}
        best = max(r["psnr"] for r in rows if r["task"] == task and r["series"].startswith("RED-diff")
                   and r["nfe"] == 1000)
        summary.append({"task": task, "preset_50": mine[50], "best_1000": best, "gap": best - mine[50]})
    print("\n| task | " + " | ".join(f"{n} NFE" for n in NFES) + " |")
    print("| --- |" + " --- |" * len(NFES))
    for task, _ in TASKS:
        for series in ["RED-diff preset", *(SOLVERS[s].label for s in SAMPLERS)]:
            got = {r["nfe"]: r["psnr"] for r in rows if r["task"] == task and r["series"] == series}
            print(f"| {task}, {series} | " + " | ".join(f"{got[n]:.2f}" if n in got else "–" for n in NFES) + " |")
    for s in summary:
        print(f"{s['task']}: preset at 50 NFE {s['preset_50']:.2f} dB, best RED-diff at 1000 NFE {s['best_1000']:.2f} "
              f"dB, gap {s['gap']:+.2f} dB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prior": args.prior, "images": [n for n, _ in images], "size": 48, "rows": rows,
                               "summary": summary, "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
    print(f"wrote {out}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 3.4), sharey=False)
    for ax, (task, noise) in zip(axes, TASKS):
        for series in ["RED-diff preset", *(SOLVERS[s].label for s in SAMPLERS)]:
            got = sorted((r["nfe"], r["psnr"]) for r in rows if r["task"] == task and r["series"] == series)
            ax.plot([g[0] for g in got], [g[1] for g in got], marker="o", label=series)
        paper = next(r["psnr"] for r in rows if r["task"] == task and r["series"] == "RED-diff paper")
        ax.scatter([1000], [paper], marker="*", s=120, color="black", label="RED-diff paper, 1000", zorder=5)
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations")
        ax.set_title(f"{task}, σ_y {noise}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR dB (held-out tiles)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
