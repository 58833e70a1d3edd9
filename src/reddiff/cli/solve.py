"""``reddiff solve``: restore images, simulating their measurements (``--input``) or from real ones
(``--measurement``); folders, batches, resuming, locks and ``torchrun`` sharding."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import ReddiffError
from .common import (
    POS_INT,
    add_measure_args,
    add_prior_args,
    add_run_args,
    add_solver_args,
    advance,
    device_from,
    load_cli_prior,
    noise_from_args,
    output_path,
    progress,
    say,
    solver_from_args,
    task_preset,
    unique_stems,
)

NAME = "solve"
RANK = 1
HELP = "restore images: simulate a measurement of clean images (--input) or solve real ones (--measurement)"
DESCRIPTION = ("Restore images with RED-diff (or --solver). With --input, a measurement of each clean image is "
               "simulated and PSNR/SSIM are reported; with --measurement, the given measurement images are solved. "
               "DIR receives, per image, DIR/<name>/estimate.png, measurement.png, grid.png (and mask.png for "
               "inpainting) and run.json (with --num-samples N also samples/ and spread.png). Rerunning the same "
               "command skips finished images; other settings need --overwrite.")
INTERRUPTED = "finished images are complete; rerun the same command to resume"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="CLEAN", help="clean image file or folder (a measurement is simulated)")
    src.add_argument("--measurement", metavar="Y", help="measurement image file or folder (from `reddiff degrade`)")
    p.add_argument("--mask", metavar="M.png", help="inpainting mask for --measurement (white = observed)")
    p.add_argument("--output", metavar="DIR", required=True, help="output folder")
    add_measure_args(p)
    add_prior_args(p)
    add_solver_args(p)
    run_group = add_run_args(p)
    run_group.add_argument("--batch-size", type=POS_INT, default=1,
                           help="images per batch (each with its --num-samples samples) (default: %(default)s)")
    p.add_argument("--num-samples", type=POS_INT, default=1, metavar="N",
                   help="draw N restorations of each measurement together: DIR/<name>/samples/sample_00.png ..., "
                        "their pixel-wise spread as a heat map (spread.png) and their mean as estimate.png; with "
                        "RED-diff, --repulsion G > 0 pushes the samples apart (default: %(default)s)")
    p.add_argument("--trajectory", type=POS_INT, default=None, metavar="K",
                   help="also write DIR/<name>/trajectory.gif: the estimate every K steps as it evolves (RED-diff's "
                        "mu, a sampler's x0 prediction), the same view the browser app shows")


def _match_channels(y_img: Any, op: Any) -> Any:
    """Give a measurement image the channel count the operator's measurement has (RGB <-> grey)."""
    import torch

    probe = op.y_to_image(op.A(torch.zeros((1, *op.x_shape))))
    want, got = probe.shape[1], y_img.shape[1]
    if want == got:
        return y_img
    return y_img.mean(dim=1, keepdim=True) if want == 1 else y_img.expand(-1, want, -1, -1)


def _jobs(args: argparse.Namespace, files: list[Path], noise: Any, ranks: Any) -> list[Any]:
    """Load and check every input (every rank checks all, so a bad file fails everywhere before any work) and
    return this rank's jobs."""
    from ..experiment import Job, Seeds, operator_for
    from ..io import load_image
    from ..operators import load_mask, x_shape_from_measurement

    jobs = []
    for index, f in enumerate(files):
        notices: list[str] = []
        if args.input is not None:
            x = load_image(f, channels=3, notices=notices)
            x_shape, y_img = tuple(x.shape[1:]), None
        else:
            y_img = load_image(f, channels=None, notices=notices)
            x_shape, x = x_shape_from_measurement(args.task, tuple(y_img.shape[1:])), None
        mask = load_mask(args.mask, x_shape) if args.mask else None
        seeds = Seeds.for_image(args.seed, f.stem)
        op, gen = operator_for(args.task, x_shape, seeds.operator, mask)
        if not ranks.mine(index):
            continue  # another rank's image
        for n in notices:
            say(f"reddiff: note: {n}")
        if x is not None:
            y = noise.sample(op.A(x), gen)
        else:
            y = op.image_to_y(_match_channels(y_img, op))
        jobs.append(Job(f.stem, op, y, seeds, clean=x, source=f, samples=args.num_samples))
    return jobs


#: The trajectory file inside DIR/<name>/.
TRAJECTORY = "trajectory.gif"


def _trajectory(frames: list[Any], row: int, outcome: Any, out_dir: Path) -> dict[str, str] | None:
    """Write one image's trajectory (its rows of the batch's frames; the first sample's with --num-samples) as a
    GIF, scaled up for small images; None when the frames do not cover the batch (a batch split for memory)."""
    import torch

    from ..io import save_animation

    if not frames or frames[0].shape[0] <= row or frames[0].shape[1:] != outcome.estimate.shape[1:]:
        return None
    side = max(outcome.estimate.shape[-2:])
    shown = [f[row:row + 1] for f in frames]
    final = outcome.estimate.clamp(-1, 1)
    if not torch.equal(shown[-1], final):  # a sampler's last x0 prediction, or the mean of several samples
        shown.append(final)
    path = save_animation(shown, out_dir / outcome.job.name / TRAJECTORY, scale=max(1, 256 // side))
    return {"trajectory": str(path)}


def _settings(job: Any, args: argparse.Namespace, noise: Any, solver: Any, prior: Any) -> dict[str, Any]:
    """What an image's result depends on (its fingerprint decides whether a finished image can be reused)."""
    from ..networks.loading import file_sha256
    from ..runtime import runtime_of

    return {"input_sha256": file_sha256(job.source), "kind": "clean" if args.input is not None else "measurement",
            "mask_sha256": file_sha256(Path(args.mask)) if args.mask else None, "task": job.operator.task,
            "sigma_y": args.sigma_y, "noise": noise.params(), "seed": args.seed, "solver": solver.to_dict(),
            **prior.fingerprint(), "runtime": runtime_of(prior).to_dict(),
            **({"num_samples": job.samples} if job.samples > 1 else {})}


def _resume(jobs: list[Any], out_dir: Path, overwrite: bool) -> tuple[list[Any], list[dict[str, Any]]]:
    """Split jobs into those to run and the records of those already finished with the same settings."""
    from ..experiment import RUN_JSON, read_record, settings_fingerprint

    todo, done, clashes = [], [], []
    for job in jobs:
        path = out_dir / job.name / RUN_JSON
        if path.is_file() and not overwrite:
            old = read_record(path)
            if old.get("settings_sha256") == settings_fingerprint(job.settings):
                done.append({**old.get("record", {}), "skipped": True})
                continue
            clashes.append(job.name)
        todo.append(job)
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise ReddiffError(f"outputs in {out_dir} for {', '.join(clashes[:3])}{more} were made with other settings; "
                           "pass --overwrite to replace them or choose another --output")
    return todo, done


def run(args: argparse.Namespace) -> int:
    from ..experiment import ImageLocks, OutputDir, group_batches, solve_jobs, write_outputs
    from ..io import dumps, list_images, write_json
    from ..tools.presets import PRESET_KEYS, no_preset_notice
    from .ranks import Ranks

    t_start = time.perf_counter()
    if args.mask is not None and args.input is not None:
        raise ReddiffError("--mask goes with --measurement; with --input use --task inpaint-mask:PATH")
    out_path = output_path(args.output)
    files = list_images(args.input if args.input is not None else args.measurement)
    unique_stems(files)
    solver_from_args(args)  # validate the settings before any work
    noise = noise_from_args(args)

    with Ranks(device_from(args.device)) as ranks:
        device = ranks.device

        def prepare() -> tuple[Any, ...]:
            jobs = _jobs(args, files, noise, ranks)
            task = jobs[0].operator.task if jobs else args.task
            t_load = time.perf_counter()
            prior = load_cli_prior(args, device, show_progress=ranks.rank == 0)
            preset = task_preset(args, prior, task, noise.sigma_y)
            solver = solver_from_args(args, preset)
            for job in jobs:
                job.settings = _settings(job, args, noise, solver, prior)
            todo, done = _resume(jobs, out_path, args.overwrite)
            return task, prior, preset, solver, todo, done, time.perf_counter() - t_load

        task, prior, preset, solver, todo, done, prior_seconds = ranks.agree(prepare)
        given = set(getattr(args, "solver_fields", None) or {})
        if (solver.name == "reddiff" and args.profile == "preset" and not preset and not given & set(PRESET_KEYS)
                and ranks.rank == 0):
            say(f"reddiff: note: {no_preset_notice(prior, task)}")
        if ranks.rank == 0 and solver.name == "reddiff":
            if args.num_samples > 1 and solver.repulsion == 0:
                say("reddiff: note: RED-diff seeks a mode, so its samples differ only through its noise draws; "
                    "--repulsion G (e.g. 0.1) pushes them apart")
            elif args.num_samples == 1 and solver.repulsion > 0:
                say("reddiff: note: --repulsion acts among the samples of one measurement; it does nothing without "
                    "--num-samples N > 1")
        if done and not args.json and ranks.rank == 0:
            say(f"reddiff: {len(done)} image(s) already done with these settings: skipped")

        def compute() -> tuple[list[dict[str, Any]], list[str]]:
            records, notes = [], []
            with OutputDir(out_path) as out_dir, ImageLocks(out_dir, [job.name for job in todo]):
                img_bar = progress(len(todo), "images", args.no_progress or len(todo) <= 1, position=1)
                for batch in group_batches(todo, args.batch_size):
                    step_bar = progress(solver.steps, solver.label, args.no_progress)
                    frames: list[Any] = []

                    def on_step(info: Any, bar: Any = step_bar, frames: list[Any] = frames) -> None:
                        advance(bar, info)
                        if args.trajectory and (info.step % args.trajectory == 0 or info.step == info.num_steps - 1):
                            frames.append(info.x.detach().cpu().clamp(-1, 1))
                        if (info.step % 10 == 0 or info.step == info.num_steps - 1) and "loss" in info.losses:
                            bar.set_postfix(loss=f"{info.losses['loss']:.4g}", t=info.t)

                    outcomes = solve_jobs(solver, prior, batch, device, noise, callback=on_step, notes=notes, say=say)
                    step_bar.close()
                    rows = 0
                    for outcome in outcomes:
                        extra = _trajectory(frames, rows, outcome, out_dir) if args.trajectory else None
                        rows += max(1, outcome.job.samples)
                        records.append(write_outputs(outcome, out_dir, solver=solver, prior=prior, noise=noise,
                                                     preset=preset, base_seed=args.seed, sigma_y_pixel=args.sigma_y,
                                                     device=str(args.device), label=solver.label,
                                                     extra_outputs=extra))
                        img_bar.update(1)
                img_bar.close()
            return records, notes

        records, notes = ranks.agree(compute)
        results = sorted(ranks.gather(done + records), key=lambda r: r["name"])
        notes = list(dict.fromkeys(ranks.gather(notes)))  # each rank says the same solver notes
        if ranks.rank != 0:
            return 0
    summary: dict[str, Any] = {
        "task": task, "solver": solver.to_dict(), "prior": {k: prior.info.get(k) for k in ("name", "path", "sha256")},
        "images": results, "outputs": [r["outputs"]["estimate"] for r in results],
        "seconds": round(time.perf_counter() - t_start, 3), "prior_load_seconds": round(prior_seconds, 3),
        "processes": ranks.world, "skipped": sum(1 for r in results if r.get("skipped")), "notes": notes,
    }
    for key in ("psnr", "ssim"):
        vals = [r[key] for r in results if r.get(key) is not None]
        summary[key] = (sum(vals) / len(vals)) if vals else None
    if len(results) > 1:
        write_json(summary, out_path / "metrics.json")
    if args.json:
        print(dumps(summary))
    else:
        _print_table(results, summary)
    return 0


def _print_table(results: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if value is not None else "-"

    print(f"{'image':<24} {'PSNR dB':>8} {'SSIM':>7} {'pinv dB':>8} {'seconds':>8}  estimate")
    for r in results:
        print(f"{r['name'][:24]:<24} {fmt(r.get('psnr'), '.2f'):>8} {fmt(r.get('ssim'), '.4f'):>7} "
              f"{fmt(r.get('psnr_pinv'), '.2f'):>8} {r['seconds']:>8.2f}  {r['outputs']['estimate']}")
    if len(results) > 1 and summary.get("psnr") is not None:
        print(f"{'mean':<24} {summary['psnr']:>8.2f} {fmt(summary.get('ssim'), '.4f'):>7}")
