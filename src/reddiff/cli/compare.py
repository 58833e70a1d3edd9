"""``reddiff compare``: the same measurements through several solvers; one grid and one table per image."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ReddiffError
from .common import (
    add_input_output,
    add_measure_args,
    add_prior_args,
    add_run_args,
    add_solver_args,
    advance,
    device_from,
    load_cli_prior,
    noise_from_args,
    output_path,
    parse_list,
    progress,
    simulated_jobs,
    solver_from_args,
    task_preset,
    unique_stems,
)

NAME = "compare"
RANK = 3
HELP = "run several solvers on the same measurements and prior; grid and table"
DESCRIPTION = ("Simulate a measurement of each clean image (as `solve --input` does, same seeds) and restore it with "
               "each solver. Writes DIR/<name>/compare_grid.png (measurement, each solver, ground truth), "
               "DIR/<name>/<solver>.png and DIR/compare.json, and prints PSNR, SSIM, seconds, network evaluations "
               "and peak memory per solver. A solver that cannot use the task's operator is reported, not run.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_output(p)
    add_measure_args(p)
    add_prior_args(p)
    add_solver_args(p, multi=True)
    add_run_args(p)


def _one(name: str, args: argparse.Namespace, prior: Any, job: Any, preset: dict[str, Any], device: Any,
         noise: Any) -> tuple[dict[str, Any], Any]:
    """One solver on one image: its table row and its estimate (None when it cannot run)."""
    from ..errors import SolverError
    from ..experiment import solve_jobs
    from ..tools.profiling import PeakMemory

    solver = solver_from_args(args, preset if name == "reddiff" else None, name=name, strict=False)
    bar = progress(solver.steps, solver.label, args.no_progress)
    try:
        with PeakMemory(device) as mem:
            (out,) = solve_jobs(solver, prior, [job], device, noise, callback=lambda info: advance(bar, info))
    except SolverError as exc:
        return {"solver": name, "error": str(exc)}, None
    finally:
        bar.close()
    row = {"solver": name, **out.scores.to_dict(), "seconds": round(out.seconds, 3),
           "network_evals": out.network_evals, "peak_memory_mb": round(mem.peak_mb, 1), "settings": solver.to_dict()}
    return row, out.estimate.clamp(-1, 1)


def run(args: argparse.Namespace) -> int:
    from ..experiment import OutputDir
    from ..io import dumps, list_images, make_grid, save_image, write_json
    from ..solvers import SOLVERS

    out_path = output_path(args.output)
    names = parse_list(args.solvers, list(SOLVERS), "solver")
    for n in names:
        solver_from_args(args, name=n, strict=False)  # validate settings before any work
    files = list_images(args.input)
    unique_stems(files)
    if not args.overwrite:
        taken = [f.stem for f in files if (out_path / f.stem / "compare_grid.png").exists()]
        if taken:
            raise ReddiffError(f"outputs exist in {out_path} for {', '.join(taken[:3])}; pass --overwrite")
    noise = noise_from_args(args)
    device = device_from(args.device)
    jobs = simulated_jobs(files, args.task, noise, args.seed)
    prior = load_cli_prior(args, device)
    report: dict[str, Any] = {"task": jobs[0].operator.task, "sigma_y": args.sigma_y, "prior": prior.info.get("name"),
                              "images": []}
    with OutputDir(out_path) as out_dir:
        for job in jobs:
            preset = task_preset(args, prior, job.operator.task, noise.sigma_y)
            rows, tiles = [], [job.operator.y_to_image(job.y).clamp(-1, 1)]
            labels = ["measurement"]
            for n in names:
                row, est = _one(n, args, prior, job, preset, device, noise)
                rows.append(row)
                if est is not None:
                    save_image(est, out_dir / job.name / f"{n}.png")
                    tiles.append(est)
                    labels.append(SOLVERS[n].label)
            grid = save_image(make_grid([*tiles, job.clean], [*labels, "ground truth"]),
                              out_dir / job.name / "compare_grid.png")
            report["images"].append({"name": job.name, "grid": str(grid), "results": rows})
        write_json(report, out_dir / "compare.json")
    if args.json:
        print(dumps(report))
        return 0
    for img in report["images"]:
        print(f"{img['name']}  ({report['task']}, sigma_y {args.sigma_y})  grid: {img['grid']}")
        print(f"  {'solver':<9} {'PSNR dB':>8} {'SSIM':>7} {'seconds':>8} {'NFEs':>6} {'peak MB':>8}")
        for r in img["results"]:
            if "error" in r:
                print(f"  {r['solver']:<9} n/a: {r['error']}")
                continue
            ssim_text = f"{r['ssim']:.4f}" if r["ssim"] is not None else "-"
            print(f"  {r['solver']:<9} {r['psnr']:>8.2f} {ssim_text:>7} {r['seconds']:>8.2f} "
                  f"{r['network_evals']:>6} {r['peak_memory_mb']:>8.1f}")
    return 0
