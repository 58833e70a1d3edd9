"""``reddiff demo``: restore a held-out picture from several simulated measurements and show a before/after grid."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ReddiffError
from .common import NONNEG_FLOAT, NONNEG_INT, POS_INT, device_from, load_cli_prior, progress, say

NAME = "demo"
RANK = 4
HELP = "restore a held-out picture from several simulated measurements and show a before/after grid"
DESCRIPTION = ("With no arguments: the 256x256 centre crop of the held-out 'astronaut' picture, measured with sr:4 "
               "(noise 0.01), inpaint-random:0.8 (noiseless) and deblur-gauss (noise 0.01), restored with RED-diff "
               "and the bundled prior and its presets. Writes DIR/demo_grid.png (rows: measurement, RED-diff, ground "
               "truth), each estimate as DIR/<i>_<task>.png and DIR/demo.json, and prints PSNR/SSIM (of the estimate "
               "as saved, by the rule of `solve` and `eval`) and seconds per task.")

#: (task, noise in 0..1 pixel units) shown by `reddiff demo` without --task.
DEMO_TASKS = (("sr:4", 0.01), ("inpaint-random:0.8", 0.0), ("deblur-gauss", 0.01))


def demo_image_path() -> Path:
    """The bundled held-out demo picture (256x256 centre crop of scikit-image's astronaut)."""
    return Path(__file__).resolve().parents[1] / "assets" / "astronaut256.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", metavar="IMAGE", default=None,
                   help="a clean image (default: the bundled held-out astronaut crop)")
    p.add_argument("--task", action="append", default=None, metavar="TASK",
                   help="a task to show; repeat for several (default: sr:4, inpaint-random:0.8, deblur-gauss)")
    p.add_argument("--sigma-y", type=NONNEG_FLOAT, default=None,
                   help="noise in 0..1 pixel units for every task (default: 0.01 for sr and deblur, 0 for inpainting)")
    p.add_argument("--output", metavar="DIR", default="reddiff-demo", help="output folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in DIR")
    p.add_argument("--prior", metavar="SPEC", default="bundled", help="the prior (default: %(default)s)")
    p.add_argument("--prior-config", metavar="JSON", default=None, help="create_model arguments for --prior")
    p.add_argument("--steps", type=POS_INT, default=None, help="RED-diff steps (default: the preset's)")
    p.add_argument("--seed", type=NONNEG_INT, default=0, help="seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..experiment import OutputDir, restore
    from ..io import dumps, load_image, make_grid, save_image, write_json
    from ..operators import make_operator

    out_path = Path(args.output)
    if (out_path / "demo.json").exists() and not args.overwrite:
        raise ReddiffError(f"a demo is already in {out_path}; pass --overwrite or choose another --output")
    src = Path(args.input) if args.input else demo_image_path()
    notices: list[str] = []
    x = load_image(src, channels=3, notices=notices)
    for n in notices:
        say(f"reddiff: note: {n}")
    if args.task:
        tasks = [(t, args.sigma_y if args.sigma_y is not None else 0.0) for t in args.task]
    else:
        tasks = [(t, args.sigma_y if args.sigma_y is not None else s) for t, s in DEMO_TASKS]
    for task, _ in tasks:  # every task string checked before any work
        make_operator(task, tuple(x.shape[1:]), generator=torch.Generator().manual_seed(0))
    device = device_from(args.device)
    prior = load_cli_prior(args, device)
    x = x.to(device)
    rows, results = [], []
    with OutputDir(out_path) as out_dir:
        for i, (task, noise) in enumerate(tasks):
            bar = progress(0, task, args.no_progress)

            def on_step(info: Any, bar: Any = bar) -> None:
                if bar.total != info.num_steps:
                    bar.reset(total=info.num_steps)
                bar.update(1)

            r = restore(prior, x, task, 2.0 * noise, seed=args.seed + i, callback=on_step, steps=args.steps)
            bar.close()
            estimate = save_image(r.estimate, out_dir / f"{i}_{r.task.replace(':', '_').replace('+', '-')}.png")
            rows.append(make_grid([r.measurement_image, r.estimate, r.clean],
                                  [f"{r.task} y", f"RED-diff {r.psnr:.2f} dB", "ground truth"]))
            results.append({"task": r.task, "sigma_y": noise, "psnr": r.psnr, "ssim": r.ssim,
                            "psnr_pinv": r.psnr_measurement, "seconds": round(r.seconds, 2), "solver": r.solver,
                            "preset": r.preset, "estimate": str(estimate)})
        width = max(r.shape[2] for r in rows)
        grid = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[2]), value=1.0) for r in rows], dim=1)
        grid_path = save_image(grid, out_dir / "demo_grid.png")
        summary = {"image": str(src), "prior": {k: prior.info.get(k) for k in ("name", "path", "sha256")},
                   "results": results, "grid": str(grid_path)}
        write_json(summary, out_dir / "demo.json")
    if args.json:
        print(dumps(summary))
        return 0
    print(f"{'task':<22} {'noise':>6} {'PSNR dB':>8} {'SSIM':>7} {'A+y dB':>7} {'seconds':>8}")
    for r in results:
        pinv = f"{r['psnr_pinv']:.2f}" if r["psnr_pinv"] is not None else "-"
        ssim_text = f"{r['ssim']:.4f}" if r["ssim"] is not None else "-"
        print(f"{r['task']:<22} {r['sigma_y']:>6g} {r['psnr']:>8.2f} {ssim_text:>7} {pinv:>7} {r['seconds']:>8.1f}")
    print(f"grid: {grid_path}")
    return 0
