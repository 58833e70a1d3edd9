"""``reddiff degrade``: simulate measurements of clean images and write them as files ``solve --measurement``
accepts."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ReddiffError
from .common import add_input_output, add_measure_args, noise_from_args, output_path, simulated_jobs, unique_stems

NAME = "degrade"
RANK = 2
HELP = "simulate measurements of clean images (files that `solve --measurement` accepts)"
DESCRIPTION = ("Write, per image, DIR/<name>.png (the measurement as an image), DIR/<name>.mask.png for inpainting, "
               "and DIR/<name>.json. Solve them with `reddiff solve --measurement DIR/<name>.png --task TASK --seed "
               "SEED` (the same task and seed rebuild the same operator). --overwrite replaces an image's whole "
               "record, removing files of the earlier one that the new one does not have (a stale mask).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_output(p)
    add_measure_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (the whole record of an image)")


def _record_files(out_dir: Path, stem: str) -> list[Path]:
    return [out_dir / f"{stem}{suffix}" for suffix in (".png", ".mask.png", ".json")]


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..experiment import OutputDir, mask_image
    from ..io import list_images, save_image, write_json

    out_path = output_path(args.output)
    files = list_images(args.input)
    unique_stems(files)
    if not args.overwrite:
        taken = [f.stem for f in files if any(p.exists() for p in _record_files(out_path, f.stem))]
        if taken:
            raise ReddiffError(f"outputs exist in {out_path} for {', '.join(taken[:3])}; pass --overwrite")
    noise = noise_from_args(args)
    jobs = simulated_jobs(files, args.task, noise, args.seed)  # all first: a bad file fails before any write
    with OutputDir(out_path) as out_dir:
        for job in jobs:
            f, op, y, seeds = job.source, job.operator, job.y, job.seeds
            outs = {"measurement": str(save_image(op.y_to_image(y).clamp(-1, 1), out_dir / f"{f.stem}.png"))}
            mask = mask_image(op)
            if mask is not None:
                outs["mask"] = str(save_image(mask, out_dir / f"{f.stem}.mask.png"))
            solve_with = (f"reddiff solve --measurement {outs['measurement']} --task {op.task} --seed {args.seed}"
                          + (f" --mask {outs['mask']}" if "mask" in outs else "") + f" --sigma-y {args.sigma_y}"
                          + (f" --noise {args.noise}" if args.noise != "gaussian" else ""))
            record = {
                "reddiff_version": __version__, "input": str(f), "task": {"task": op.task, "params": op.params()},
                "sigma_y": {"pixel_0_1": args.sigma_y, "internal_-1_1": noise.sigma_y}, "noise": noise.params(),
                "seeds": {"base": args.seed, "operator": seeds.operator}, "outputs": outs, "solve_with": solve_with,
            }
            outs["record"] = str(write_json(record, out_dir / f"{f.stem}.json"))
            for stale in _record_files(out_dir, f.stem):  # files of an earlier record the new one does not have
                if str(stale) not in outs.values():
                    stale.unlink(missing_ok=True)
            print(outs["measurement"])
    return 0
