"""Choose RED-diff task presets for a prior by a grid sweep on crops of *training* images.

For each task (and noise level) every (lam, lr) pair of the grid runs on the same crops; the pair with the best mean
PSNR becomes the preset. The held-out pictures (astronaut, chelsea, coffee) are never used here. With ``--write``
the presets (and the full sweep table as provenance) are written beside the prior's weights, where
``reddiff solve``/``demo`` and :func:`reddiff.pipeline.restore` pick them up.

    python benchmarks/sweep_presets.py --prior bundled --write
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reddiff import load_prior
from reddiff.data import HELD_OUT, builtin_training_images
from reddiff.io import from_unit
from reddiff.pipeline import restore
from reddiff.presets import presets_path

#: (task family string, noise levels in 0..1 pixel units). The preset of the first level applies up to the
#: midpoint between levels.
TASKS = (
    ("sr:4", (0.01,)),
    ("inpaint-random:0.8", (0.0,)),
    ("deblur-gauss", (0.01,)),
    ("denoise", (0.1,)),
)
#: (training picture, top, left) of the sweep crops.
CROPS = (("china", 150, 200), ("rocket", 100, 250))


def crops(size: int) -> list[tuple[str, torch.Tensor]]:
    images = dict(builtin_training_images())
    out = []
    for name, top, left in CROPS:
        assert name not in HELD_OUT
        img = images[name][top : top + size, left : left + size]
        out.append((name, from_unit(torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="bundled")
    parser.add_argument("--size", type=int, default=128, help="crop size")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lams", default="0.1,0.25,0.5,1.0")
    parser.add_argument("--lrs", default="0.1,0.25")
    parser.add_argument("--tasks", default=",".join(t for t, _ in TASKS))
    parser.add_argument("--noise", default=None, help="comma-separated noise levels (0..1 units) for every task, "
                        "for noise-dependent presets (default: each task's level above)")
    parser.add_argument("--write", action="store_true", help="write the presets beside the prior's weights")
    parser.add_argument("--out", default="benchmarks/results/sweep_presets.json")
    args = parser.parse_args(argv)

    prior = load_prior(args.prior, progress=False).eval()
    lams = [float(v) for v in args.lams.split(",")]
    lrs = [float(v) for v in args.lrs.split(",")]
    images = crops(args.size)
    wanted = args.tasks.split(",")
    table: list[dict] = []
    presets: dict[str, list[dict]] = {}
    t_start = time.perf_counter()
    for task, levels in TASKS:
        if task not in wanted:
            continue
        if args.noise:
            levels = tuple(sorted(float(v) for v in args.noise.split(",")))
        family = task.split(":")[0]
        entries = []
        for j, noise in enumerate(levels):
            scores = {}
            for lam, lr in itertools.product(lams, lrs):
                vals = []
                for i, (_, x) in enumerate(images):
                    r = restore(prior, x, task, 2 * noise, seed=1000 + i, lam=lam, lr=lr, steps=args.steps,
                                weighting="linear")
                    vals.append(r.psnr)
                scores[(lam, lr)] = float(np.mean(vals))
                table.append({"task": task, "sigma_y": noise, "lam": lam, "lr": lr, "psnr": scores[(lam, lr)],
                              "per_image": vals})
                print(f"{task:<20} noise {noise:<5} lam {lam:<5} lr {lr:<5} {scores[(lam, lr)]:6.2f} dB",
                      file=sys.stderr)
            (lam, lr), best = max(scores.items(), key=lambda kv: kv[1])
            bound = None if j == len(levels) - 1 else (levels[j] + levels[j + 1])  # midpoint, in [-1, 1] units
            entries.append({"max_sigma_y": bound, "lam": lam, "lr": lr, "steps": args.steps, "weighting": "linear",
                            "note": f"best mean PSNR {best:.2f} dB at sigma_y {noise} (0..1 units)"})
        presets[family] = entries

    print(f"\n{'task':<10} {'max sigma_y':>11} {'lam':>5} {'lr':>5} {'steps':>5}  note")
    for family, entries in presets.items():
        for e in entries:
            bound = "-" if e["max_sigma_y"] is None else f"{e['max_sigma_y']:.3f}"
            print(f"{family:<10} {bound:>11} {e['lam']:>5} {e['lr']:>5} {e['steps']:>5}  {e['note']}")
    provenance = {
        "script": "benchmarks/sweep_presets.py",
        "date": datetime.date.today().isoformat(),
        "prior_sha256": prior.info.get("sha256"),
        "crops": [{"image": n, "top": t, "left": le, "size": args.size} for n, t, le in CROPS],
        "grid": {"lam": lams, "lr": lrs, "steps": args.steps, "weighting": "linear"},
        "criterion": "mean PSNR over the crops; sigma_y bounds are midpoints between swept levels, in [-1, 1] units",
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": provenance, "presets": presets, "table": table}, indent=2))
    print(f"wrote {out}")
    if args.write:
        target = presets_path(prior.info["path"])
        old = json.loads(target.read_text()) if target.is_file() else {"tasks": {}}
        old.setdefault("tasks", {}).update(presets)
        old["provenance"] = provenance
        target.write_text(json.dumps(old, indent=2) + "\n")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
