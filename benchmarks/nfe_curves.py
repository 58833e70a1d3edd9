"""Quality against steps: PSNR against network evaluations (NFE) for RED-diff and each sampler with a prior.

On held-out tiles (astronaut, chelsea, coffee, grace_hopper, 48 px centres of the 64 px tiles of
``evaluate_heldout.py``; never swept), for ``sr:4`` (σ_y 0.01), ``inpaint-random:0.8`` (0) and ``deblur-gauss``
(0.01): RED-diff with the prior's preset at 10, 20, 50, 100, 200 and 1000 steps (one network evaluation per step),
RED-diff with the paper's settings at 1000 steps, and DPS, ΠGDM and DDRM at 10 … 200 steps (``--sampler-nfes``).
The question the table answers: how close does the preset come at 50 NFE to the best 1000-NFE RED-diff result?
Writes JSON and a plot (``docs/nfe_curves.png``). Not a timed test. ``--tasks`` gives the curves on the other preset
tasks (each at the noise level its preset was swept at; ``--samplers none`` for RED-diff alone):

    python benchmarks/nfe_curves.py --out benchmarks/results/nfe_curves.json --plot docs/nfe_curves.png
    python benchmarks/nfe_curves.py --tasks bicubic:4@0.01,deblur-uniform:9@0.01,\
deblur-motion@0.01,inpaint-box@0,inpaint-center@0,inpaint-half@0,inpaint-freeform@0,colorize@0.01,cs@0.01,\
hdr@0.01,jpeg@0,quantize@0,phase-retrieval@0.01,denoise@0.1 \
        --out benchmarks/results/nfe_curves_alltasks.json --plot docs/nfe_curves_alltasks.png
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
from reddiff.experiment.evaluation import usable_solvers
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
    parser.add_argument("--tasks", default=",".join(f"{t}@{n}" for t, n in TASKS),
                        help="TASK@SIGMA_Y (0..1 units), comma-separated (default: %(default)s)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS),
                        help="samplers to run beside RED-diff (default: %(default)s; 'none' for RED-diff alone)")
    parser.add_argument("--sampler-nfes", default=",".join(map(str, SAMPLER_NFES)),
                        help="step counts of DPS, ΠGDM and DDRM (default: %(default)s; add 1000 for the full curve)")
    parser.add_argument("--reuse", metavar="RESULTS.json", default=None,
                        help="take the rows an earlier run measured (same prior and tiles) instead of running again")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out, args.plot)

    prior = load_prior(args.prior, progress=False).eval()
    tiles = write_sets(Path(args.work))["heldout20"]
    images = [(n, load_image(tiles / f"{n}.png")[..., 8:56, 8:56]) for n in args.images.split(",")]
    earlier = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    if earlier and (earlier["prior"], earlier["images"]) != (args.prior, [n for n, _ in images]):
        raise SystemExit(f"--reuse {args.reuse}: measured with another prior or other tiles")
    # a row is taken again only if it ran with the same solver settings (a preset re-swept since is run again)
    cached = {(r["series"], r["task"], r["sigma_y"], r["nfe"], json.dumps(r["solver"], sort_keys=True)): r
              for r in earlier.get("rows", []) if "solver" in r}
    t0 = time.perf_counter()
    rows, refused = [], {}
    sampler_nfes = [int(n) for n in args.sampler_nfes.split(",")]
    tasks = [(t, float(n)) for t, n in (item.rsplit("@", 1) for item in args.tasks.split(","))]
    samplers = [] if args.samplers == "none" else args.samplers.split(",")

    def run(series: str, task: str, noise: float, nfe: int, make) -> None:
        settings = make().to_dict()
        key = (series, task, noise, nfe, json.dumps(settings, sort_keys=True))
        if key in cached:
            rows.append(cached[key])
            return
        vals = [restore(prior, x, task, 2 * noise, seed=1000 + i, solver=make()).psnr
                for i, (_, x) in enumerate(images)]
        rows.append({"series": series, "task": task, "sigma_y": noise, "nfe": nfe, "psnr": float(np.mean(vals)),
                     "per_image": vals, "solver": settings})
        print(f"{series:<16} {task:<20} {nfe:>5} NFE  {np.mean(vals):6.2f} dB", flush=True)

    for task, noise in tasks:
        preset = preset_for_prior(prior, task, 2 * noise)
        for nfe in NFES:
            run("RED-diff preset", task, noise, nfe, lambda n=nfe, p=preset: RedDiff(**{**p, "steps": n}))
        paper_lr = 0.5 if task.startswith("inpaint") else 0.1  # the paper's lr for inpainting, and its default
        run("RED-diff paper", task, noise, 1000, lambda lr=paper_lr: RedDiff(lr=lr))
        usable, refused[task] = usable_solvers({n: SOLVERS[n]() for n in samplers}, task, 48, prior)
        for name, why in refused[task].items():
            print(f"{SOLVERS[name].label:<16} {task:<20} not run: {why}", flush=True)
        for name in usable:
            for nfe in sampler_nfes:
                run(SOLVERS[name].label, task, noise, nfe, lambda n=nfe, c=SOLVERS[name]: c(steps=n))

    summary = []
    for task, _ in tasks:
        mine = {r["nfe"]: r["psnr"] for r in rows if r["task"] == task and r["series"] == "RED-diff preset"}
        best = max(r["psnr"] for r in rows if r["task"] == task and r["series"].startswith("RED-diff")
                   and r["nfe"] == 1000)
        summary.append({"task": task, "preset_50": mine[50], "best_1000": best, "gap": best - mine[50]})
    print("\n| task | " + " | ".join(f"{n} NFE" for n in NFES) + " |")
    print("| --- |" + " --- |" * len(NFES))
    series_names = ["RED-diff preset", *(SOLVERS[s].label for s in samplers)]
    for task, _ in tasks:
        for series in series_names:
            got = {r["nfe"]: r["psnr"] for r in rows if r["task"] == task and r["series"] == series}
            if got:
                print(f"| {task}, {series} | " + " | ".join(f"{got[n]:.2f}" if n in got else "–" for n in NFES) + " |")
    for s in summary:
        print(f"{s['task']}: preset at 50 NFE {s['preset_50']:.2f} dB, best RED-diff at 1000 NFE {s['best_1000']:.2f} "
              f"dB, gap {s['gap']:+.2f} dB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prior": args.prior, "images": [n for n, _ in images], "size": 48, "rows": rows,
                               "summary": summary, "refused": refused, "seconds": round(time.perf_counter() - t0, 1)},
                              indent=2) + "\n")
    print(f"wrote {out}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(tasks), 4)
    rows_n = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), sharey=False, squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(tasks):]:
        ax.axis("off")
    for ax, (task, noise) in zip(axes, tasks):
        for series in series_names:
            got = sorted((r["nfe"], r["psnr"]) for r in rows if r["task"] == task and r["series"] == series)
            ax.plot([g[0] for g in got], [g[1] for g in got], marker="o", label=series)
        paper = next(r["psnr"] for r in rows if r["task"] == task and r["series"] == "RED-diff paper")
        ax.scatter([1000], [paper], marker="*", s=120, color="black", label="RED-diff paper, 1000", zorder=5)
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations")
        ax.set_title(f"{task}, σ_y {noise}")
        ax.grid(alpha=0.3)
    for ax in axes[::cols]:
        ax.set_ylabel("PSNR dB (held-out tiles)")
    axes[len(tasks) - 1].legend(fontsize=8)
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
