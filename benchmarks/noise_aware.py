"""Noise-aware presets: RED-diff's λ chosen per noise level, and what it buys on pictures the sweep never saw.

With the mean-normalised data term the likelihood's 1/σ_y² is gone, so λ does not see the noise: the right balance
between prior and data has to be chosen per noise level. For each task below and each σ_y in 0, 0.01, 0.025, 0.05,
0.1 (0..1 pixel units), λ is swept over {1/4, 1/2, 1, 2, 4} × the task's fixed preset λ (the preset's other fields
kept) on the three *training* sweep crops (64 px, 100 steps), the grid doubling (or halving) past its edge while the
pick lies on it (up to 1024× either way). The pick is the best λ unless one nearer the fixed preset's comes within
0.1 dB of it (``common.pick_factor``); it becomes the preset entry of a noise band whose bound lies halfway
(geometrically) to the next level. Then, on ``--tiles`` held-out 64 px tiles spread over astronaut, chelsea, coffee
and grace_hopper (never swept), the noise-aware preset is scored against the fixed one at every level. Not a timed
test (about 15 to 30 minutes per task on a busy 2-core CPU).

``--reuse RESULTS.json`` takes every score an earlier run of this script measured (same prior, crops, tiles and
seeds: the runs are deterministic) instead of measuring it again, and the fixed presets from it, so a wider grid or
more tasks cost only the new runs. A task whose preset already has noise bands needs it (its fixed preset is kept
there):

    python benchmarks/noise_aware.py --reuse benchmarks/results/noise_aware.json --write \
        --out /tmp/noise_aware.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import add_overwrite, pick_factor, refuse_existing
from evaluate_heldout import write_sets
from sweep_presets import crops

from reddiff import load_prior
from reddiff.experiment import restore
from reddiff.io import load_image
from reddiff.solvers import RedDiff
from reddiff.tools.presets import PRESET_KEYS, load_presets, preset_for, presets_path

TASKS = ("sr:4", "deblur-gauss", "inpaint-random:0.8", "inpaint-box", "bicubic:4", "inpaint-center",
         "inpaint-freeform", "deblur-uniform:9")
LEVELS = (0.0, 0.01, 0.025, 0.05, 0.1)  # sigma_y, 0..1 pixel units
FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: how far the λ grid may widen past FACTORS when the pick lies on its edge
MAX_FACTOR = 1024.0


def bounds(levels: tuple[float, ...]) -> list[float | None]:
    """The upper bound of each level's band, in [-1, 1] units: the geometric midpoint to the next level (the
    arithmetic one next to 0), None for the last."""
    out: list[float | None] = []
    for a, b in zip(levels, levels[1:]):
        mid = math.sqrt(a * b) if a > 0 else b / 2
        out.append(round(2 * mid, 6))
    return [*out, None]


def mean_se(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="bundled")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--tiles", type=int, default=12, help="held-out tiles to score (of 20)")
    parser.add_argument("--work", default="/tmp/reddiff-noise-aware")
    parser.add_argument("--write", action="store_true", help="write the banded presets beside the prior's weights")
    parser.add_argument("--apply", metavar="RESULTS.json", default=None,
                        help="write the bands of an earlier run's results beside the prior's weights, and stop")
    parser.add_argument("--reuse", metavar="RESULTS.json", default=None,
                        help="take the scores and fixed presets an earlier run measured instead of measuring again")
    parser.add_argument("--out", default="benchmarks/results/noise_aware.json")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    if args.apply:
        return apply(args.apply, args.prior)
    refuse_existing(args, args.out)

    prior = load_prior(args.prior, progress=False).eval()
    presets = load_presets(prior.info.get("path"))
    earlier = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    cache = Scores(earlier)
    train = crops(64)
    tile_files = sorted(write_sets(Path(args.work))["heldout20"].glob("*.png"))
    step = max(1, len(tile_files) // args.tiles)
    tiles = [(f.stem, load_image(f)) for f in tile_files[::step][: args.tiles]]
    if earlier:
        was = earlier["provenance"]
        now = {"prior_sha256": prior.info.get("sha256"), "train_crops": crop_record(train),
               "heldout_tiles": [n for n, _ in tiles]}
        if any(was.get(k) != v for k, v in now.items()):
            raise SystemExit(f"--reuse {args.reuse}: measured with another prior, other crops or other tiles")
    t0 = time.perf_counter()
    sweep, heldout, bands = [], [], {}

    def score(images, kind, task, sigma, settings) -> list[float]:
        key = (kind, task, sigma, settings["lam"])
        if key not in cache.values:
            cache.values[key] = [restore(prior, x, task, 2 * sigma, seed=1000 + i, solver=RedDiff(**settings)).psnr
                                 for i, (_, x) in enumerate(images)]
        return cache.values[key]

    fixed_of: dict[str, dict] = {}
    for task in args.tasks.split(","):
        family = task.split(":")[0]
        fixed = fixed_of[task] = fixed_preset(presets, earlier, task)
        entries = []
        for sigma, bound in zip(LEVELS, bounds(LEVELS)):
            tried: dict[float, float] = {}
            todo = list(FACTORS)
            while todo:
                f = todo.pop(0)
                settings = {**fixed, "lam": float(f"{fixed['lam'] * f:.4g}")}
                vals = score(train, "train", task, sigma, settings)
                tried[f] = float(np.mean(vals))
                sweep.append({"task": task, "sigma_y": sigma, "factor": f, "lam": settings["lam"],
                              "psnr": tried[f], "per_image": vals})
                print(f"sweep {task:<20} sigma {sigma:<6} lam {settings['lam']:<8g} {tried[f]:6.2f} dB",
                      file=sys.stderr, flush=True)
                factor = pick_factor(tried)
                if not todo:  # widen the grid while the pick lies on its edge
                    if factor == max(tried) and factor * 2 <= MAX_FACTOR:
                        todo.append(factor * 2)
                    elif factor == min(tried) and factor / 2 >= 1 / MAX_FACTOR:
                        todo.append(factor / 2)
            best = tried[factor]
            settings = {**fixed, "lam": float(f"{fixed['lam'] * factor:.4g}")}
            entries.append({"max_sigma_y": bound, **{k: settings[k] for k in PRESET_KEYS if k in settings},
                            "note": f"λ {factor:g} × the fixed preset's: mean PSNR {best:.2f} dB (best of the grid "
                                    f"{max(tried.values()):.2f}) on {len(train)} 64px training crops at noise {sigma} "
                                    "(0..1 units)"})
            row = {"task": task, "sigma_y": sigma, "lam_fixed": fixed["lam"], "lam_aware": settings["lam"]}
            for side, s in (("fixed", fixed), ("aware", settings)):
                summary = cache.summary.get((task, sigma, s["lam"]))
                if summary and ("heldout", task, sigma, s["lam"]) not in cache.values:
                    row[side] = summary
                else:
                    vals = score(tiles, "heldout", task, sigma, s)
                    row[side] = mean_se(vals)
                    row.setdefault("per_tile", {})[side] = vals
            row["gain"] = row["aware"]["mean"] - row["fixed"]["mean"]
            heldout.append(row)
            print(f"held-out {task:<14} sigma {sigma:<6} fixed {row['fixed']['mean']:.2f}  noise-aware "
                  f"{row['aware']['mean']:.2f} (λ {settings['lam']:g})  gain {row['gain']:+.2f} dB", flush=True)
        bands[family] = entries

    print("\n| task | σ_y | λ fixed | λ noise-aware | fixed dB | noise-aware dB | gain |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in heldout:
        print(f"| {r['task']} | {r['sigma_y']} | {r['lam_fixed']:g} | {r['lam_aware']:g} | "
              f"{r['fixed']['mean']:.2f} ± {r['fixed']['se']:.2f} | {r['aware']['mean']:.2f} ± {r['aware']['se']:.2f} "
              f"| {r['gain']:+.2f} |")
    provenance = {"script": "benchmarks/noise_aware.py", "date": datetime.date.today().isoformat(),
                  "prior_sha256": prior.info.get("sha256"), "levels": list(LEVELS), "factors": list(FACTORS),
                  "train_crops": crop_record(train),
                  "heldout_tiles": [n for n, _ in tiles],
                  # this run's time alone: with --reuse most scores were measured by the runs before it
                  "seconds_this_run": round(time.perf_counter() - t0, 1),
                  "max_factor": MAX_FACTOR,
                  "reused": Path(args.reuse).name if args.reuse else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": provenance, "fixed": fixed_of, "bands": bands, "heldout": heldout,
                               "sweep": sweep}, indent=2) + "\n")
    print(f"wrote {out}")
    if args.write:
        write_bands(prior, bands, provenance)
    return 0


def crop_record(train: list) -> list[dict]:
    return [{"image": n, "top": t, "left": le, "size": 64} for (n, t, le), _ in train]


class Scores:
    """Scores an earlier run measured: per-image PSNRs by (``train`` | ``heldout``, task, σ_y, λ), and the held-out
    mean and SE by (task, σ_y, λ) for rows that kept no per-tile values."""

    def __init__(self, earlier: dict) -> None:
        self.values: dict[tuple, list[float]] = {}
        self.summary: dict[tuple, dict[str, float]] = {}
        for r in earlier.get("sweep", []):
            self.values[("train", r["task"], r["sigma_y"], r["lam"])] = r["per_image"]
        for r in earlier.get("heldout", []):
            for side, lam in (("fixed", r["lam_fixed"]), ("aware", r["lam_aware"])):
                self.summary[(r["task"], r["sigma_y"], lam)] = r[side]
                if side in r.get("per_tile", {}):
                    self.values[("heldout", r["task"], r["sigma_y"], lam)] = r["per_tile"][side]


def fixed_preset(presets: dict, earlier: dict, task: str) -> dict:
    """The task's preset before noise bands: from the earlier run that made them, or its single σ-free entry."""
    if task in earlier.get("fixed", {}):
        return earlier["fixed"][task]
    entries = presets["tasks"].get(task.split(":")[0], []) if presets else []
    if len(entries) != 1:
        raise SystemExit(f"{task}: no single fixed preset to start from (it has {len(entries)} entries); "
                         "pass --reuse with the results that made its noise bands")
    return preset_for(presets, task, 0.0)


def write_bands(prior, bands: dict, provenance: dict) -> None:
    """Put the banded presets beside the prior's weights (the other tasks' presets kept), with provenance."""
    target = presets_path(prior.info["path"])
    data = json.loads(target.read_text())
    data["tasks"].update(bands)
    data.setdefault("provenance", {})["noise_aware"] = {k: v for k, v in provenance.items() if k != "heldout_tiles"}
    target.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {target}")


def apply(path: str, prior_spec: str) -> int:
    """``--apply RESULTS.json``: write the bands of an earlier run (its JSON) without sweeping again."""
    result = json.loads(Path(path).read_text())
    write_bands(load_prior(prior_spec, progress=False), result["bands"], result["provenance"])
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    sys.exit(main())
