"""Choose RED-diff task presets for a prior by a sweep on crops of *training* images.

For each task every candidate setting runs on the same crops; the one with the best mean PSNR becomes the preset.
The held-out pictures (astronaut, chelsea, coffee) are never used here. With ``--write`` the presets (and the
sweep table as provenance) are written beside the prior's weights, where ``reddiff solve``/``demo`` and
:func:`reddiff.restore` pick them up.

The candidates include the paper's settings (``init=pinv``, all timesteps, constant ``lr``) and refinements of a
classical start (``init=classical``) over the low-noise timesteps only (``t_max``) with a cosine ``lr`` decay, with
the paper's inverse-SNR weighting or a constant one (``weighting=const``), which
is what a small prior and 100 steps need (see docs/MODEL_CARD.md).

    python benchmarks/sweep_presets.py --prior bundled --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import add_overwrite, refuse_existing

from reddiff import load_prior
from reddiff.experiment import restore
from reddiff.io import from_unit
from reddiff.schedule import VPSchedule
from reddiff.solvers import RedDiff
from reddiff.tools.data import HELD_OUT, builtin_training_images
from reddiff.tools.presets import presets_path


def _grid(base: dict, **axes: tuple) -> list[dict]:
    out = [dict(base)]
    for key, values in axes.items():
        out = [{**c, key: v} for c in out for v in values]
    return out


PAPER = {"lam": 0.25, "lr": 0.1, "weighting": "linear", "init": "pinv", "lr_schedule": "constant"}
REFINE = {"weighting": "linear", "init": "classical", "lr_schedule": "cosine"}
CONST = {**REFINE, "weighting": "const"}  # every visited timestep weighted alike: the low-noise ones count as much
#: task -> (noise in 0..1 pixel units, candidate settings)
TASKS: dict[str, tuple[float, list[dict]]] = {
    "sr:4": (0.01, [PAPER]
             + _grid(REFINE, t_max=(25, 50, 100), lam=(0.05, 0.1, 0.25), lr=(0.03,))
             + _grid(CONST, t_max=(25, 50, 100), lam=(0.01, 0.02, 0.05), lr=(0.03,))),
    "inpaint-random:0.8": (0.0, [{**PAPER, "lr": 0.5}]
                           + _grid(REFINE, t_max=(50, 100, 150), lam=(0.1,), lr=(0.04,))
                           + _grid(CONST, t_max=(50, 100, 150), lam=(0.02, 0.05, 0.1), lr=(0.04,))
                           + _grid(CONST, t_max=(100,), lam=(0.05,), lr=(0.02, 0.06))),
    "deblur-gauss": (0.01, [PAPER]
                     + _grid({**REFINE, "init": "pinv"}, t_max=(25, 50, 100), lam=(0.01, 0.025, 0.05), lr=(0.03,))
                     + _grid({**CONST, "init": "pinv"}, t_max=(25, 50, 100), lam=(0.002, 0.005), lr=(0.03,))),
    "denoise": (0.1, [PAPER]
                + _grid({**REFINE, "init": "pinv"}, t_max=(30, 60), lam=(4.0, 8.0, 16.0), lr=(0.02,))
                + _grid({**CONST, "init": "pinv"}, t_max=(30, 60), lam=(0.5, 1.0, 2.0), lr=(0.02,))),
    # The other built-in tasks (swept at 96 px on the three sweep crops, see docs/MODEL_CARD.md): the paper's settings
    # and the refinements that won above, around the timesteps and lambda their measurement suggests; where the
    # first sweep's best lambda sat at the grid's edge (bicubic, cs, hdr, phase-retrieval), the grid goes further.
    "bicubic:4": (0.01, [PAPER] + _grid({**CONST, "init": "pinv"}, t_max=(50, 100), lam=(0.01, 0.02, 0.05),
                                        lr=(0.03,))
                  + _grid({**CONST, "init": "pinv"}, t_max=(100,), lam=(0.1, 0.2), lr=(0.03,))),
    "deblur-uniform:9": (0.01, [PAPER] + _grid({**CONST, "init": "pinv"}, t_max=(50, 100), lam=(0.001, 0.002, 0.005),
                                               lr=(0.03,))),
    "deblur-motion": (0.01, [PAPER] + _grid({**CONST, "init": "pinv"}, t_max=(50, 100), lam=(0.001, 0.002, 0.005),
                                            lr=(0.03,))),
    "inpaint-box": (0.0, [{**PAPER, "lr": 0.5}] + _grid(CONST, t_max=(50, 200, 999), lam=(0.02, 0.1), lr=(0.04,))),
    "inpaint-center": (0.0, [{**PAPER, "lr": 0.5}] + _grid(CONST, t_max=(50, 200, 999), lam=(0.02, 0.1),
                                                           lr=(0.04,))),
    "inpaint-half": (0.0, [{**PAPER, "lr": 0.5}] + _grid(CONST, t_max=(50, 200, 999), lam=(0.02, 0.1), lr=(0.04,))),
    "inpaint-freeform": (0.0, [{**PAPER, "lr": 0.5}] + _grid(CONST, t_max=(50, 200, 999), lam=(0.02, 0.1),
                                                             lr=(0.04,))),
    "colorize": (0.01, [PAPER] + _grid({**CONST, "init": "pinv"}, t_max=(50, 200, 999), lam=(0.02, 0.1), lr=(0.03,))),
    "cs": (0.01, [PAPER] + _grid({**CONST, "init": "pinv"}, t_max=(50, 200), lam=(0.005, 0.02, 0.08), lr=(0.03,))
           + _grid({**CONST, "init": "pinv"}, t_max=(50,), lam=(0.2, 0.5), lr=(0.03,))),
    "hdr": (0.01, [PAPER] + _grid({**CONST, "init": "pinv"}, t_max=(50, 200), lam=(0.005, 0.02, 0.08), lr=(0.03,))
            + _grid({**CONST, "init": "pinv"}, t_max=(50,), lam=(0.2, 0.5), lr=(0.03,))),
    "jpeg": (0.0, [PAPER] + _grid({**CONST, "init": "pinv"}, t_max=(30, 100), lam=(0.02, 0.1, 0.5), lr=(0.02,))),
    "quantize": (0.0, [PAPER] + _grid({**CONST, "init": "pinv"}, t_max=(30, 100), lam=(0.02, 0.1, 0.5), lr=(0.02,))),
    "phase-retrieval": (0.01, [PAPER] + _grid({**CONST, "init": "pinv"}, t_max=(200, 999), lam=(0.02, 0.1, 0.5),
                                              lr=(0.03,))
                        + _grid({**CONST, "init": "pinv"}, t_max=(999,), lam=(1.0, 2.0), lr=(0.03,))),
}
#: (training picture, top, left) of the sweep crops.
CROPS = (("china", 150, 200), ("rocket", 100, 250), ("flower", 100, 300))


def crops(size: int, crop_set: str = "sweep") -> list[tuple[tuple[str, int, int], torch.Tensor]]:
    """((picture, top, left), crop) pairs: ``sweep`` the three :data:`CROPS`; ``all`` those plus the centre crop of
    every other training picture (18 in all)."""
    images = dict(builtin_training_images())
    boxes = list(CROPS)
    if crop_set == "all":
        boxes += [(name, (img.shape[0] - size) // 2, (img.shape[1] - size) // 2)
                  for name, img in images.items() if name not in {n for n, _, _ in CROPS}]
    out = []
    for name, top, left in boxes:
        assert name not in HELD_OUT
        img = images[name][top : top + size, left : left + size]
        out.append(((name, top, left),
                    from_unit(torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None])))
    return out


def on_prior_schedule(prior, t_vp: int) -> float:
    """The time on ``prior``'s schedule with the noise level of index ``t_vp`` of the linear VP schedule (T = 1000):
    the same index for such priors, e.g. t = 0.083 for t_vp = 50 on a rectified-flow schedule."""
    t = prior.schedule.time_at_abar(VPSchedule().abar_of(t_vp))
    return t if isinstance(t, int) else round(float(t), 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="bundled")
    parser.add_argument("--size", type=int, default=128, help="crop size")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--crops", choices=("sweep", "all"), default="sweep",
                        help="sweep: three crops of china, rocket, flower; all: those and the centre crop of every "
                             "other training picture (18; about 6x the time, a steadier choice)")
    parser.add_argument("--write", action="store_true", help="write the presets beside the prior's weights")
    parser.add_argument("--out", default="benchmarks/results/sweep_presets.json")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out)

    prior = load_prior(args.prior, progress=False).eval()
    images = crops(args.size, args.crops)
    table: list[dict] = []
    presets: dict[str, list[dict]] = {}
    t_start = time.perf_counter()
    for task in args.tasks.split(","):
        noise, candidates = TASKS[task]
        scores = []
        for cand in candidates:
            settings = {**cand, "steps": args.steps}
            if "t_max" in settings:  # the grid's t_max are VP indices (T = 1000): the same noise level here
                settings["t_max"] = on_prior_schedule(prior, settings["t_max"])
            # the candidate alone: a preset already on disk must not fill in the fields it leaves to the defaults
            vals = [restore(prior, x, task, 2 * noise, seed=1000 + i, solver=RedDiff(**settings)).psnr
                    for i, (_, x) in enumerate(images)]
            scores.append((float(np.mean(vals)), settings))
            table.append({"task": task, "sigma_y": noise, **settings, "psnr": float(np.mean(vals)),
                          "per_image": vals})
            print(f"{task:<20} {json.dumps(settings):<120} {np.mean(vals):6.2f} dB", file=sys.stderr)
        best, settings = max(scores, key=lambda s: s[0])
        paper = scores[0][0]
        presets[task.split(":")[0]] = [{"max_sigma_y": None, **settings,
                                        "note": f"best mean PSNR {best:.2f} dB on {len(images)} {args.size}px crops "
                                                f"of training pictures at noise {noise} (0..1 units); the paper's "
                                                f"settings gave {paper:.2f} dB"}]

    print(f"\n{'task':<10} preset")
    for family, entries in presets.items():
        for e in entries:
            print(f"{family:<10} {json.dumps({k: v for k, v in e.items() if k != 'note'})}  {e['note']}")
    provenance = {
        "script": "benchmarks/sweep_presets.py",
        "date": datetime.date.today().isoformat(),
        "prior_sha256": prior.info.get("sha256"),
        "crops": {task: [{"image": n, "top": t, "left": le, "size": args.size} for (n, t, le), _ in images]
                  for task in args.tasks.split(",")},
        "candidates": {task: TASKS[task][1] for task in args.tasks.split(",")},
        "criterion": "mean PSNR over the crops (training pictures only)",
        "t_max": "candidates give t_max as an index of the linear VP schedule (T = 1000); the preset holds the time "
                 "of the same noise level on the prior's own schedule",
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
        before = old.get("provenance") or {}
        if before.get("prior_sha256") == provenance["prior_sha256"]:  # a partial re-sweep: keep the other tasks' record
            for key in ("crops", "candidates"):
                kept = before.get(key)
                if isinstance(kept, list):  # the older single crop list, shared by every task
                    kept = {task: kept for task in before.get("candidates", {})}
                if isinstance(kept, dict):
                    provenance[key] = {**kept, **provenance[key]}
        old["provenance"] = provenance
        target.write_text(json.dumps(old, indent=2) + "\n")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
