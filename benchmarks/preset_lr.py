"""A preset's learning rate against its step count: does the lr chosen at 100 steps still hold at 50?

The presets were swept at 100 steps, most of them with lr 0.03 as the only learning rate. Run with fewer steps, a
task whose estimate must travel far from its start (compressed sensing starts from Aᵀy) stops short: `cs` at 50
steps scored 20.4 dB on held-out tiles against 31.4 at 100 (``nfe_curves.py``). For each task here the preset's lr is
scaled by each ``--factors`` value, the other fields kept, and run at each ``--steps`` count on the training crops
(64 px; ``--crops all``: the three sweep crops and the centre crop of every other training picture, 18 in all; never
the held-out pictures). The pick is the factor with the best mean PSNR summed over the step counts, unless one nearer
1 comes within 0.1 dB of it (as in ``noise_aware.py``). ``--write`` sets the pick's lr in every noise band of the
task's preset beside the prior's weights, with provenance. Not a timed test (a few CPU-minutes per task).

    python benchmarks/preset_lr.py --tasks cs@0.01 --factors 1,2,4 --write --out benchmarks/results/preset_lr.json

Then, around the lr it wrote (the pick was the grid's top), without ``--write``:

    python benchmarks/preset_lr.py --tasks cs@0.01 --factors 1,2,4,8 --out benchmarks/results/preset_lr_around_pick.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import add_overwrite, pick_factor, refuse_existing
from sweep_presets import crops

from reddiff import load_prior
from reddiff.experiment import restore
from reddiff.solvers import RedDiff
from reddiff.tools.presets import load_presets, preset_for, presets_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="bundled")
    parser.add_argument("--tasks", default="cs@0.01", help="TASK@SIGMA_Y (0..1 units), comma-separated")
    parser.add_argument("--factors", default="1,1.5,2", help="lr multipliers (default: %(default)s)")
    parser.add_argument("--steps", default="50,100", help="step counts (default: %(default)s)")
    parser.add_argument("--crops", choices=("sweep", "all"), default="all")
    parser.add_argument("--write", action="store_true", help="write the picks into the presets beside the weights")
    parser.add_argument("--apply", metavar="RESULTS.json", default=None,
                        help="write the picks of an earlier run (its JSON) into the presets, and stop")
    parser.add_argument("--out", default="benchmarks/results/preset_lr.json")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    if args.apply:
        write_picks(load_prior(args.prior, progress=False), json.loads(Path(args.apply).read_text())["provenance"])
        return 0
    refuse_existing(args, args.out)

    prior = load_prior(args.prior, progress=False).eval()
    presets = load_presets(prior.info.get("path"))
    train = crops(64, args.crops)
    factors = [float(f) for f in args.factors.split(",")]
    step_counts = [int(n) for n in args.steps.split(",")]
    tasks = [(t, float(n)) for t, n in (item.rsplit("@", 1) for item in args.tasks.split(","))]
    t0 = time.perf_counter()
    rows, picks = [], {}
    for task, sigma in tasks:
        base = preset_for(presets, task, 2 * sigma)
        if not base:
            raise SystemExit(f"{task}: no preset for this prior to start from")
        total = {}
        for f in factors:
            total[f] = 0.0
            for n in step_counts:
                settings = {**base, "lr": float(f"{base['lr'] * f:.4g}"), "steps": n}
                vals = [restore(prior, x, task, 2 * sigma, seed=1000 + i, solver=RedDiff(**settings)).psnr
                        for i, (_, x) in enumerate(train)]
                total[f] += float(np.mean(vals))
                rows.append({"task": task, "sigma_y": sigma, "factor": f, "lr": settings["lr"], "steps": n,
                             "psnr": float(np.mean(vals)), "per_image": vals})
                print(f"{task:<18} lr {settings['lr']:<7g} {n:>4} steps  {np.mean(vals):6.2f} dB", flush=True)
        f = pick_factor(total)
        picks[task] = {"factor": f, "lr": float(f"{base['lr'] * f:.4g}"), "lr_before": base["lr"]}

    print("\n| task | σ_y | lr | " + " | ".join(f"{n} steps" for n in step_counts) + " |")
    print("| --- | --- | --- |" + " --- |" * len(step_counts))
    for task, sigma in tasks:
        for f in factors:
            got = {r["steps"]: r["psnr"] for r in rows if r["task"] == task and r["factor"] == f}
            mark = " (pick)" if picks[task]["factor"] == f else ""
            lr = next(r["lr"] for r in rows if r["task"] == task and r["factor"] == f)
            print(f"| {task} | {sigma:g} | {lr:g}{mark} | " + " | ".join(f"{got[n]:.2f}" for n in step_counts) + " |")
    provenance = {"script": "benchmarks/preset_lr.py", "date": datetime.date.today().isoformat(),
                  "prior_sha256": prior.info.get("sha256"), "factors": factors, "steps": step_counts,
                  "crops": [{"image": n, "top": t, "left": le, "size": 64} for (n, t, le), _ in train],
                  "picks": picks, "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": provenance, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    if args.write:
        write_picks(prior, provenance)
    return 0


def write_picks(prior, provenance: dict) -> None:
    """Set each picked lr in every noise band of its task's preset beside the prior's weights, with provenance."""
    if provenance["prior_sha256"] != prior.info.get("sha256"):
        raise SystemExit("these results were measured with another prior")
    target = presets_path(prior.info["path"])
    data = json.loads(target.read_text())
    for task, p in provenance["picks"].items():
        for entry in data["tasks"][task.split(":")[0]]:
            entry["lr"] = p["lr"]
            note = re.sub(r"; lr [^;]* by benchmarks/preset_lr\.py$", "", entry.get("note", ""))
            entry["note"] = (f"{note}; lr {p['lr']:g} ({p['factor']:g} × {p['lr_before']:g}) chosen at "
                             f"{'/'.join(map(str, provenance['steps']))} steps by benchmarks/preset_lr.py")
    data.setdefault("provenance", {})["lr"] = provenance
    target.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    sys.exit(main())
