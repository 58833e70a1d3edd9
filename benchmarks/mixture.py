"""Gaussian-mixture posterior-sampling benchmark (the setup of MCGdiff, Cardoso et al. 2023, arXiv 2308.07983).

Prior: 25 components with unit covariance and means (8i, 8j, 8i, 8j, ...) for i, j in {-2, ..., 2}, weights
proportional to squared standard normal draws. Measurement: ``A = U diag(s) V^T`` with U, V from the SVD of a
``d_y x d`` standard Gaussian matrix and ``s`` sorted uniform(0, 1) draws; ``sigma_y = uniform(0, 1) * max(s)``;
``x`` from the prior, ``y = A x + sigma_y eps``. Metric: sliced Wasserstein (100 directions) between each solver's
samples and exact posterior samples. For RED-diff (mode seeking) also: the fraction of estimates within the
high-density region of a posterior component with weight >= 1 % (Mahalanobis radius^2 <= chi2_d 99 % quantile), and
the median posterior log-density of its estimates next to that of exact posterior samples.

Hyperparameters (never chosen on the reported seeds 0..P-1; ``--tune`` runs the tuning seeds 1000+):
DDRM eta = 0.85, eta_b = 1 (paper defaults); ΠGDM eta = 1, guidance scale 1 (defaults); DPS zeta = 0.3 (picked on
the separate 2-D mixture of tests/test_solvers.py, where the paper's 1.0 overshoots; not swept here);
RED-diff lam = 1, lr = 3 with cosine decay, sqrt weighting, init = random, data_term = paper: the best mean sliced
Wasserstein (and an in-mode fraction within 0.001 of the best) among ``REDDIFF_CANDIDATES`` on the tuning seeds
(``python benchmarks/mixture.py --quick --tune --dims 8,80 --dys 1,2,4``, results/mixture_quick_tune.json). The paper's
lam = 0.25, lr = 0.1, init = pinv barely move in 20-100 steps when the modes are 8-16 units apart.

Usage: ``python benchmarks/mixture.py --quick`` (d = 8, d_y in {1, 2}, 3 problems, 500 samples, 20 and 100 steps),
or without ``--quick`` for the full table (about 90 CPU-minutes; ``--dims``/``--dys`` run a part, ``--merge`` joins
the parts).
Writes a table to stdout and JSON to ``--json`` (default benchmarks/results/mixture*.json).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from common import add_overwrite, refuse_existing
from scipy.stats import chi2

from reddiff import Problem, RedDiff
from reddiff.operators.matrix import MatrixOperator
from reddiff.solvers import DDRM, DPS, PiGDM
from reddiff.tools.gmm import GaussianMixturePrior, sliced_wasserstein

F64 = torch.float64


def make_prior(d: int, g: torch.Generator) -> GaussianMixturePrior:
    grid = torch.tensor([(8.0 * i, 8.0 * j) for i in range(-2, 3) for j in range(-2, 3)], dtype=F64)
    means = grid.repeat(1, (d + 1) // 2)[:, :d]
    weights = torch.randn(25, generator=g, dtype=F64) ** 2
    return GaussianMixturePrior(means, torch.eye(d, dtype=F64).expand(25, d, d).clone(), weights / weights.sum())


def make_problem(prior: GaussianMixturePrior, d: int, dy: int, g: torch.Generator):
    u, _, vt = torch.linalg.svd(torch.randn(dy, d, generator=g, dtype=F64), full_matrices=False)
    s = torch.rand(dy, generator=g, dtype=F64).sort(descending=True).values
    a = u @ torch.diag(s) @ vt
    sigma_y = float(torch.rand(1, generator=g, dtype=F64)) * float(s.max())
    x = prior.sample(1, g)
    y = x @ a.T + sigma_y * torch.randn(1, dy, generator=g, dtype=F64)
    return MatrixOperator(a), y, sigma_y


# RED-diff settings compared by ``--tune`` (on the tuning seeds only); the first is the one reported.
REDDIFF_CANDIDATES = {
    "lam1_lr3_cos_sqrt": dict(lam=1.0, lr=3.0, lr_schedule="cosine", weighting="sqrt"),
    "lam1_lr3_cos": dict(lam=1.0, lr=3.0, lr_schedule="cosine"),
    "lam1_lr1": dict(lam=1.0, lr=1.0),
    "lam1_lr1_cos": dict(lam=1.0, lr=1.0, lr_schedule="cosine"),
    "lam1_lr10_cos": dict(lam=1.0, lr=10.0, lr_schedule="cosine"),
    "lam0.25_lr3_cos": dict(lam=0.25, lr=3.0, lr_schedule="cosine"),
    "lam4_lr3_cos_const": dict(lam=4.0, lr=3.0, lr_schedule="cosine", weighting="const"),
}


def reddiff(steps: int, **settings) -> RedDiff:
    return RedDiff(steps=steps, init="random", data_term="paper", **settings)


def solvers(steps: int, tune: bool = False) -> dict:
    if tune:
        return {"reddiff:" + k: reddiff(steps, **v) for k, v in REDDIFF_CANDIDATES.items()}
    return {
        "ddrm": DDRM(steps=steps),
        "pigdm": PiGDM(steps=steps),
        "dps": DPS(steps=steps, zeta=0.3),
        "reddiff": reddiff(steps, **next(iter(REDDIFF_CANDIDATES.values()))),
    }


def mode_regions(post) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, precision) of every posterior component with weight >= 1 %: the modes RED-diff should land in."""
    d = post.means.shape[1]
    return [(post.means[k], torch.linalg.inv(post.covariances[k] + 1e-12 * torch.eye(d, dtype=F64)))
            for k in range(post.num_components) if float(post.weights[k]) >= 0.01]


def reddiff_mode_stats(post, regions: list, est: torch.Tensor, ref_lp_median: float) -> dict:
    radius2 = chi2.ppf(0.99, est.shape[1])
    inside = torch.zeros(est.shape[0], dtype=torch.bool)
    for mean, precision in regions:
        diff = est - mean
        inside |= (diff @ precision * diff).sum(1) <= radius2
    return {"in_mode": float(inside.double().mean()), "logp_median": float(post.log_prob(est).median()),
            "ref_logp_median": ref_lp_median}


def format_table(rows: list[dict], tune: bool) -> str:
    """Sliced Wasserstein (mean ± s.e. over problems) per solver, and RED-diff's mode statistics."""
    names = [k for k in rows[0] if k == "prior" or (k in solvers(1, tune))]
    lines = ["sliced Wasserstein to the exact posterior (mean ± s.e. over problems; lower is better); "
             "RED-diff: fraction of estimates inside a posterior mode, median posterior log-density "
             "(exact samples' in brackets)"]
    head = "| d | d_y | steps | " + " | ".join(names) + " | " + " | ".join(
        f"{n} in-mode | {n} logp" for n in names if n.startswith("reddiff")) + " |"
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r[n]:.2f} ± {r[n + '_se']:.2f}" for n in names]
        for n in names:
            if n.startswith("reddiff"):
                cells += [f"{r[n + '|in_mode']:.2f}", f"{r[n + '|logp_median']:.1f} [{r[n + '|ref_logp_median']:.1f}]"]
        lines.append(f"| {r['d']} | {r['d_y']} | {r['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Sliced Wasserstein per solver for every (d, d_y), one panel per step count (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in ("prior", "ddrm", "pigdm", "dps", "reddiff") if k in rows[0]]
    step_list = sorted({r["steps"] for r in rows})
    fig, axes = plt.subplots(1, len(step_list), figsize=(6 * len(step_list), 3.6), sharey=True, squeeze=False)
    for ax, steps in zip(axes[0], step_list):
        sub = [r for r in rows if r["steps"] == steps]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(sub))]
            ax.bar(xs, [r[name] for r in sub], width, yerr=[r[name + "_se"] for r in sub], label=name, capsize=2)
        ax.set_xticks(range(len(sub)), [f"d={r['d']}\nd_y={r['d_y']}" for r in sub], fontsize=8)
        ax.set_title(f"{steps} steps")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("sliced Wasserstein to the exact posterior")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (minutes on a CPU)")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write JSON (default benchmarks/results/mixture[_quick|_tune].json)")
    parser.add_argument("--dims", default=None, help="comma-separated d values (default 8,80,800; quick 8)")
    parser.add_argument("--dys", default=None, help="comma-separated d_y values (default 1,2,4; quick 1,2)")
    parser.add_argument("--tune", action="store_true", help="use the tuning seeds (1000+) instead of the reported ones")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="join the rows of partial runs' JSON files (--dims/--dys parts) into --json")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the table as a bar chart (PNG)")
    add_overwrite(parser)
    args = parser.parse_args()
    if args.merge:
        refuse_existing(args, args.json or Path("benchmarks/results/mixture.json"), args.plot)
        parts = [json.loads(f.read_text()) for f in args.merge]
        rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: (r["d"], r["d_y"], r["steps"]))
        out = args.json or Path("benchmarks/results/mixture.json")
        write_json(out, parts[0]["quick"], parts[0]["tune"], sorted({r["steps"] for r in rows}), rows)
        report(rows, parts[0]["tune"], args.plot)
        return
    dims = [int(v) for v in args.dims.split(",")] if args.dims else ([8] if args.quick else [8, 80, 800])
    dys = [int(v) for v in args.dys.split(",")] if args.dys else ([1, 2] if args.quick else [1, 2, 4])
    if args.json is None:
        stem = "mixture" + ("_quick" if args.quick else "") + ("_tune" if args.tune else "")
        args.json = Path("benchmarks/results") / (stem + ".json")
    refuse_existing(args, args.json, args.plot)
    problems = 3 if args.quick else 20
    n = 500 if args.quick else 2000
    step_list = [20, 100]
    offset = 1000 if args.tune else 0
    rows: list[dict] = []
    t_start = time.perf_counter()
    for d in dims:
        for dy in dys:
            acc: dict[int, dict[str, list]] = {steps: {} for steps in step_list}
            for p in range(problems):
                # One problem per (d, d_y, p), shared by both step counts.
                g = torch.Generator().manual_seed(offset + 100 * p + 10 * dy + d)
                prior = make_prior(d, g)
                op, y, sigma_y = make_problem(prior, d, dy, g)
                post = prior.posterior(op, y, sigma_y)
                ref = post.sample(n, g)
                ref_lp_median = float(post.log_prob(ref).median())
                regions = mode_regions(post)
                prior_sw = sliced_wasserstein(prior.sample(n, g), ref)
                problem = Problem(y.expand(n, dy).clone(), op, sigma_y)
                for steps in step_list:
                    a = acc[steps]
                    a.setdefault("prior", []).append(prior_sw)
                    for name, solver in solvers(steps, args.tune).items():
                        t0 = time.perf_counter()
                        out = solver(prior, problem, torch.Generator().manual_seed(p))
                        a.setdefault(name + "_s", []).append(time.perf_counter() - t0)
                        a.setdefault(name, []).append(sliced_wasserstein(out, ref))
                        if name.startswith("reddiff"):
                            for k, v in reddiff_mode_stats(post, regions, out, ref_lp_median).items():
                                a.setdefault(f"{name}|{k}", []).append(v)
            for steps in step_list:
                row = {"d": d, "d_y": dy, "steps": steps, "problems": problems, "samples": n}
                for k, v in acc[steps].items():
                    t = torch.tensor(v, dtype=F64)
                    row[k] = float(t.mean())
                    if not k.endswith("_s") and "|" not in k:
                        row[k + "_se"] = float(t.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
                rows.append(row)
            print(f"done d={d} d_y={dy} in {time.perf_counter() - t_start:.0f} s", flush=True)
            write_json(args.json, args.quick, args.tune, step_list, rows)
    report(rows, args.tune, args.plot)


def report(rows: list[dict], tune: bool, plot_path: Path | None) -> None:
    print(format_table(rows, tune))
    if plot_path is not None and not tune:
        plot(rows, plot_path)


def write_json(path: Path, quick: bool, tune: bool, step_list: list[int], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"setup": "MCGdiff Gaussian mixture", "quick": quick, "tune": tune,
                                "solvers": {s: {k: v.to_dict() for k, v in solvers(s, tune).items()}
                                            for s in step_list},
                                "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
