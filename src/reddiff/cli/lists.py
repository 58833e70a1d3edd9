"""``reddiff list``: tasks, priors (with their presets and cache state) and solvers (every field and default).

The module is named ``lists`` so that it does not shadow the built-in ``list`` in this package."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "list"
RANK = 6
HELP = "list tasks, priors, solvers or metrics"
DESCRIPTION = ("List what reddiff offers: the tasks with their parameters, the priors with their presets and whether "
               "they are cached, and the solvers with every field and its default (--markdown: the solver tables "
               "of the README), and the metrics with the weight files they need and whether those are here.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", default="all", choices=["tasks", "priors", "solvers", "metrics", "all"])
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--markdown", action="store_true", help="print the solvers' fields as Markdown tables")


def _priors() -> dict[str, Any]:
    from ..networks.hub import BUNDLED, NAMED_PRIORS, bundled_weights, cache_dir
    from ..tools.presets import PRESET_ALIASES, load_presets

    bundled = bundled_weights()
    presets = load_presets(bundled) if bundled.is_file() else None
    priors: dict[str, Any] = {
        BUNDLED: {"description": "small natural-image prior shipped with reddiff (docs/MODEL_CARD.md); the default",
                  "file": str(bundled), "cached": bundled.is_file(), "sources": ["package data"],
                  "presets": (presets or {}).get("tasks", {}), "presets_provenance": (presets or {}).get("provenance"),
                  "preset_aliases": {a: t for a, t in PRESET_ALIASES.items()
                                     if t in (presets or {}).get("tasks", {}) and a not in presets["tasks"]}}
    }
    priors.update({name: {"description": p.description, "file": p.filename, "route": "named",
                          "family": "vp", "prediction": "epsilon",
                          "cached": (cache_dir() / p.filename).is_file(), "sources": list(p.urls)}
                   for name, p in NAMED_PRIORS.items()})
    priors[BUNDLED].update(route="named", family="vp", prediction="epsilon")
    for model in _cached_diffusers_models():
        priors[f"diffusers:{model}"] = {"description": "a diffusers model in the hub cache", "route": "diffusers",
                                        "cached": True, "sources": ["huggingface_hub cache"]}
    return priors


#: Every way to name a prior, for ``reddiff list priors``: (route, spec form, what it loads).
ROUTES = (
    ("named", "bundled, imagenet256-uncond, ffhq256", "the priors listed below: ADM, VP, epsilon-prediction"),
    ("path", "FILE.pt | FILE.safetensors", "a guided-diffusion checkpoint or a reddiff export (ADM, VP, epsilon)"),
    ("diffusers", "diffusers:FOLDER | diffusers:ORG/NAME", "a diffusers UNet2DModel and its scheduler config: VP "
     "(linear, scaled-linear, cosine betas; epsilon, sample, v_prediction) or rectified flow (velocity)"),
    ("latent", "sd:FOLDER | sd:ORG/NAME", "a Stable-Diffusion-style latent pipeline: AutoencoderKL + "
     "UNet2DConditionModel (prompt via --prompt, guidance via --guidance) or latent UNet2DModel; RED-diff and DDIM"),
    ("user", "FILE.py:FUNCTION | MODULE:FUNCTION", "your own code: a DiffusionPrior, a dict (network, prediction, "
     "schedule, data_range) or an EDM denoiser D(x, sigma); any family: vp, vp-continuous, ve, flow"),
)


def _cached_diffusers_models() -> list[str]:
    """Hub models in the huggingface_hub cache that carry a scheduler config (a diffusers prior's mark)."""
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:
        return []
    try:
        cache = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache yet, or an unreadable one: nothing cached to show
        return []
    found = []
    for repo in cache.repos:
        names = {f.file_name for rev in repo.revisions for f in rev.files}
        if repo.repo_type == "model" and "scheduler_config.json" in names:
            found.append(repo.repo_id)
    return sorted(found)


def solver_tables() -> str:
    """Every solver's fields as Markdown tables (name, default, accepted values, meaning): the README's tables."""
    from ..solvers import SOLVERS

    lines = []
    for name, cls in SOLVERS.items():
        lines += [f"`--solver {name}` ({cls.label}):", "", "| flag | default | accepted | meaning |",
                  "| --- | --- | --- | --- |"]
        for q in cls.hyperparams():
            default = q.default if not isinstance(q.default, tuple) else ",".join(f"{v:g}" for v in q.default)
            flag = f"`{q.flag}`, `--no-{q.flag[2:]}`" if q.kind == "bool" else f"`{q.flag}`"
            cells = [flag, str(default if default is not None else "none"), q.accepted(), q.help]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run(args: argparse.Namespace) -> int:
    from ..io import dumps
    from ..networks.hub import cache_dir
    from ..operators import TASKS
    from ..solvers import SOLVERS

    if args.markdown:
        print(solver_tables(), end="")
        return 0
    data: dict[str, Any] = {}
    if args.what in ("tasks", "all"):
        data["tasks"] = dict(TASKS)
    if args.what in ("priors", "all"):
        data["priors"] = _priors()
        data["prior_routes"] = [{"route": r, "spec": f, "loads": w} for r, f, w in ROUTES]
    if args.what in ("solvers", "all"):
        data["solvers"] = {name: cls().to_dict() for name, cls in SOLVERS.items()}
    if args.what in ("metrics", "all"):
        from ..metrics.registry import METRICS, metric_status

        data["metrics"] = {name: metric_status(name) for name in METRICS}
    if args.json:
        print(dumps(data, indent=2))
        return 0
    if "tasks" in data:
        print("tasks:")
        for k, v in data["tasks"].items():
            print(f"  {k:<28} {v}")
        print(f"  {'TASK+TASK':<28} composite: the parts applied in order, e.g. sr:4+inpaint-random:0.5")
        print(f"  {'file.py:function':<28} your own operator: function((C, H, W)) returns an Operator or a "
              "differentiable callable (also module:function)")
    if "priors" in data:
        print("prior routes (--prior SPEC):")
        for route, form, what in ROUTES:
            print(f"  {route:<10} {form:<40} {what}")
        print(f"priors (cache: {cache_dir()}; preset noise bands in --sigma-y units, 0..1):")
        for k, v in data["priors"].items():
            print(f"  {k:<28} {v['description']}{'  [cached]' if v['cached'] else ''}")
            for family, entries in (v.get("presets") or {}).items():
                below = None  # the bound of the band before: the last band holds above it
                for e in entries:  # bounds are stored in [-1, 1] units, shown in --sigma-y's 0..1 units
                    if e.get("max_sigma_y") is not None:
                        bound, below = f"sigma_y <= {e['max_sigma_y'] / 2:.3g}", e["max_sigma_y"] / 2
                    else:
                        bound = "any sigma_y" if below is None else f"sigma_y > {below:.3g}"
                    settings = "  ".join(f"{k} {val}" for k, val in e.items() if k not in ("max_sigma_y", "note"))
                    print(f"  {'':<28}   preset {family:<16} {bound:<18} {settings}")
            for alias, target in (v.get("preset_aliases") or {}).items():
                print(f"  {'':<28}   preset {alias:<16} {'as ' + target:<18} (a mask you draw: the brush-stroke "
                      "presets)")
            if v.get("presets"):
                print(f"  {'':<28}   preset TASK+TASK{'':<7} {'combined':<18} most steps and widest t_max of the "
                      "parts, geometric mean of their lam and lr (docs/MODEL_CARD.md)")
    if "solvers" in data:
        print("solvers:")
        for k, v in data["solvers"].items():
            fields = ", ".join(f"{a}={b}" for a, b in v.items() if a != "solver")
            print(f"  {k:<28} {fields}")
    if "metrics" in data:
        _print_metrics(data["metrics"])
    return 0


def _print_metrics(metrics: dict[str, Any]) -> None:
    from ..metrics.registry import unavailable_reason
    from ..metrics.weights import metrics_dir

    print(f"metrics (weights: {metrics_dir()}, then PyTorch's hub cache):")
    for name, m in metrics.items():
        state = "available" if m["available"] else "unavailable"
        print(f"  {name:<10} {m['kind']:<6} {m['better']:<7} {state:<12} {m['description']}")
        for w in m["weights"]:
            print(f"  {'':<10}   {w['file']}: {w['found'] or 'missing (' + w['url'] + ')'}")
        if not m["available"]:
            print(f"  {'':<10}   {unavailable_reason(name)}")
