"""``reddiff evaluate``: the papers' evaluation protocol on a folder of clean images, every solver on the same
measurements, PSNR/SSIM/LPIPS (mean ± standard error) and FID/KID; resumable and shardable with ``torchrun``."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ReddiffError
from .common import (
    NONNEG_FLOAT,
    NONNEG_INT,
    POS_INT,
    add_prior_args,
    add_run_args,
    add_solver_args,
    device_from,
    load_cli_prior,
    output_path,
    parse_list,
    progress,
    say,
    solver_from_args,
    task_preset,
)

NAME = "evaluate"
RANK = 4
HELP = "evaluate solvers on a folder of clean images by the papers' protocol: PSNR, SSIM, LPIPS, FID, KID"
DESCRIPTION = ("Centre-crop and resize every image of --data to --size (guided-diffusion's rule), simulate one "
               "measurement per image (seeds from --seed and the file name, the same for every solver), restore it "
               "with each solver, and score the saved estimates against the references: PSNR, SSIM and LPIPS as "
               "mean ± standard error, FID and KID (x 10^3 ± std over subsets) over the set. Writes DIR/references/, "
               "DIR/measurements/, DIR/<solver>/<name>.png with a record per estimate, DIR/evaluation.json, "
               "DIR/evaluation.md and DIR/grid.png. Rerunning the same command resumes; under torchrun the images "
               "are shared among the ranks. LPIPS, FID and KID need published weights (`reddiff list metrics`); "
               "without them they are left out with one note.")
INTERRUPTED = "finished estimates are complete; rerun the same command to resume"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..experiment.evaluation import PROTOCOLS

    p.add_argument("--data", metavar="DIR", required=True, help="clean images (a folder, or one file)")
    p.add_argument("--output", metavar="DIR", required=True, help="output folder")
    g = p.add_argument_group("protocol")
    g.add_argument("--protocol", choices=list(PROTOCOLS), default=None,
                   help="a published setting (task, noise, size; see the README's 'Evaluation'); the flags below "
                   "override its fields")
    g.add_argument("--task", default=None, help="the task (see `reddiff list tasks`); required without --protocol")
    g.add_argument("--sigma-y", type=NONNEG_FLOAT, default=None,
                   help="measurement noise in 0..1 pixel units (half the [-1, 1] figure papers quote) (default: the "
                   "protocol's, else 0)")
    g.add_argument("--size", type=POS_INT, default=None,
                   help="image side after the centre crop and resize (default: the protocol's, else 256)")
    g.add_argument("--limit", type=POS_INT, default=None, metavar="N", help="use the first N images (by name)")
    g.add_argument("--seed", type=NONNEG_INT, default=0, help="base seed (default: %(default)s)")
    g.add_argument("--metrics", default=None, metavar="LIST",
                   help="comma-separated metrics among psnr, ssim, lpips, lpips-vgg, fid, kid (default: every one "
                   "whose weights are here)")
    g.add_argument("--download-weights", action="store_true",
                   help="download the published weights the chosen metrics need (verified, into the cache)")
    add_prior_args(p)
    add_solver_args(p, multi=True)
    add_run_args(p)


def _metrics(args: argparse.Namespace) -> list[str]:
    from ..metrics.registry import METRICS, available_metrics, unavailable_reason
    from ..metrics.weights import fetch_weights

    if args.metrics is None:
        wanted = [m for m in METRICS if m != "lpips-vgg"] if args.download_weights else available_metrics()
        left = [m for m in METRICS if m not in wanted and m != "lpips-vgg"]
        if left:
            say(f"reddiff: note: {', '.join(left)} left out: their published weights are not here (`reddiff list "
                "metrics` says which files and where; --download-weights fetches them)")
    else:
        wanted = parse_list(args.metrics, list(METRICS), "metric")
    if args.download_weights:
        for name in dict.fromkeys(w for m in wanted for w in METRICS[m].weights):
            fetch_weights(name, progress=not args.no_progress)
    for m in wanted:
        reason = unavailable_reason(m)
        if reason:
            raise ReddiffError(reason)
    return wanted


def run(args: argparse.Namespace) -> int:
    from ..experiment.evaluation import (
        finish,
        load_dataset,
        protocol_record,
        resolve_protocol,
        run_images,
        summarize,
        usable_solvers,
    )
    from ..experiment.records import OutputDir
    from ..io import dumps
    from ..noise import GaussianNoise
    from ..solvers import SOLVERS
    from .ranks import Ranks

    out_path = output_path(args.output)
    task, sigma_y, size, proto = resolve_protocol(args.protocol, args.task, args.sigma_y, args.size)
    names = parse_list(args.solvers, list(SOLVERS), "solver")
    _, refused = usable_solvers({n: solver_from_args(args, name=n, strict=False) for n in names}, task, size)
    names = [n for n in names if n not in refused]
    for why in refused.values():
        say(f"reddiff: note: {why}; left out")
    if not names:
        raise ReddiffError(f"no solver among {args.solvers} can run {task!r}")
    images = load_dataset(args.data, size, args.limit)
    metrics = _metrics(args)
    noise = GaussianNoise(2.0 * sigma_y)

    with Ranks(device_from(args.device)) as ranks:
        device = ranks.device

        def work() -> list[dict[str, Any]]:
            prior = load_cli_prior(args, device, show_progress=ranks.rank == 0)
            preset = task_preset(args, prior, task, noise.sigma_y)
            solvers = {n: solver_from_args(args, preset if n == "reddiff" else None, name=n, strict=False)
                       for n in names}
            solvers, unfit = usable_solvers(solvers, task, size, prior)  # e.g. DPS with a latent prior
            for n, why in unfit.items():
                refused[n] = why
                if ranks.rank == 0:
                    say(f"reddiff: note: {why}; left out")
            names[:] = list(solvers)
            if not solvers:
                raise ReddiffError(f"no solver among {args.solvers} can use the prior {args.prior}")
            from ..runtime import runtime_of

            total = sum(1 for i in range(len(images)) if ranks.mine(i)) * len(solvers)
            bars = {"all": progress(total, "estimates", args.no_progress or ranks.rank != 0, position=1)}
            step_bar = progress(0, "", args.no_progress or ranks.rank != 0)

            def on_step(label: str, name: str, info: Any) -> None:
                if info.step == 0:
                    step_bar.reset(total=info.num_steps)
                    step_bar.set_description(f"{name} {label}")
                step_bar.update(1)

            with OutputDir(out_path) as out_dir:
                records = run_images(images, solvers, prior, task, noise, out_dir, seed=args.seed, device=device,
                                     settings={**prior.fingerprint(),
                                               "runtime": runtime_of(prior).to_dict()},
                                     overwrite=args.overwrite, mine=ranks.mine, callback=on_step,
                                     on_done=lambda *a: bars["all"].update(1))
            step_bar.close()
            bars["all"].close()
            return [{"labels": {n: s.label for n, s in solvers.items()}}] + records

        done = ranks.agree(work)
        labels = done[0]["labels"]
        records = ranks.gather(done[1:])  # also waits until every rank has finished its share
        if ranks.rank != 0:
            return 0
    image_names = [n for n, _ in images]
    report = summarize(out_path, image_names, names, metrics, device=device)
    report.update(protocol_record(task, sigma_y, size, args.seed, proto, len(image_names), metrics))
    report["prior"] = args.prior
    report["refused"] = refused
    report["skipped"] = sum(1 for r in records if r.get("skipped"))
    finish(out_path, report, image_names, names, labels, metrics)
    if args.json:
        print(dumps({k: v for k, v in report.items() if k != "table"}))
        return 0
    print(f"{task}, sigma_y {sigma_y:g}, {len(image_names)} images at {size}x{size}, prior {args.prior}"
          + (f" (protocol {proto.name})" if proto else ""))
    print(report["table"], end="")
    print(f"table: {out_path / 'evaluation.md'}  grid: {report['grid']}  all numbers: {out_path / 'evaluation.json'}")
    return 0
