"""What the subcommands share: the one-line-error parser, argument groups (prior, runtime, measurement, run, and
every solver field generated from the solvers' declarations), and small helpers (device, progress bars, notes)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ReddiffError

__all__ = ["Parser", "number", "POS_INT", "NONNEG_INT", "POS_FLOAT", "NONNEG_FLOAT", "add_prior_args",
           "add_runtime_args", "add_solver_args", "add_measure_args", "add_run_args", "solver_from_args",
           "load_cli_prior", "device_from", "progress", "say", "unique_stems", "parse_list", "noise_from_args",
           "add_input_output", "output_path", "load_clean", "simulated_jobs"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line ``reddiff: error: ...`` with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"reddiff: error: {message} (see `{self.prog} --help`)\n")


def number(kind: type, *, minimum: float | None = None, strict: bool = False, what: str = "value"
           ) -> Callable[[str], Any]:
    """An argparse ``type`` for finite numbers of ``kind`` at or above (``strict``: above) ``minimum``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if minimum is not None and (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        return value

    parse.__name__ = what
    return parse


POS_INT = number(int, minimum=1, what="positive integer")
NONNEG_INT = number(int, minimum=0, what="integer >= 0")
POS_FLOAT = number(float, minimum=0, strict=True, what="number > 0")
NONNEG_FLOAT = number(float, minimum=0, what="number >= 0")


# -- prior and runtime ------------------------------------------------------------------------------------------
def add_runtime_args(g: Any) -> None:
    """``--precision``, ``--channels-last``, ``--compile``: how the network runs."""
    from ..runtime import PRECISIONS

    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="network precision (autocast; the solver's variables stay fp32) (default: %(default)s)")
    g.add_argument("--channels-last", action="store_true", help="run the network in channels-last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the network (pays off over many steps)")


def add_prior_args(p: argparse.ArgumentParser, *, runtime: bool = True, device: bool = True) -> None:
    """``--prior``, ``--prior-config``, (with ``device``) ``--device`` and (with ``runtime``) the runtime flags."""
    g = p.add_argument_group("prior")
    g.add_argument("--prior", metavar="SPEC", default="bundled",
                   help="diffusion prior: 'bundled' (the small natural-image prior shipped with reddiff), a named "
                   "prior (`reddiff list priors`; downloaded to the cache on first use), the path of a "
                   "guided-diffusion .pt checkpoint or a reddiff .safetensors export, diffusers:FOLDER_OR_HUB_ID (a "
                   "diffusers UNet2DModel with its scheduler config), sd:FOLDER_OR_HUB_ID (a Stable-Diffusion-style "
                   "latent pipeline: autoencoder + latent UNet; see the README's 'Latent priors'), or "
                   "my_model.py:make (your own code; see the README's 'Your own model') (default: %(default)s)")
    g.add_argument("--prior-config", metavar="JSON", default=None,
                   help="JSON file of guided-diffusion create_model arguments for --prior (default: the named "
                   "prior's own, the JSON beside a .safetensors file, or inferred from the checkpoint)")
    g.add_argument("--prompt", metavar="TEXT", default=None,
                   help="text-conditioned latent priors (sd:...): the prompt the denoiser is conditioned on "
                   "(default: empty, the unconditional prior)")
    g.add_argument("--guidance", metavar="SCALE", type=number(float, minimum=1.0, what="--guidance"), default=None,
                   help="text-conditioned latent priors: classifier-free guidance scale (default: 1, off; above 1 "
                   "each step evaluates the network twice)")
    if device:
        g.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, cuda:1, "
                       "... (default: %(default)s)")
    if runtime:
        add_runtime_args(g)


def device_from(spec: str) -> Any:
    """The torch device of ``--device`` (``auto``: CUDA when available)."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ReddiffError(f"unknown device {spec!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReddiffError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
    return dev


def load_cli_prior(args: argparse.Namespace, device: Any, show_progress: bool = True) -> Any:
    """The prior of ``--prior``/``--prior-config`` on ``device``, in eval mode, with the runtime flags applied."""
    from ..prior import load_prior
    from ..runtime import Runtime, use_runtime

    prior = load_prior(args.prior, args.prior_config, device=device,
                       progress=show_progress and not getattr(args, "no_progress", False),
                       prompt=getattr(args, "prompt", None), guidance=getattr(args, "guidance", None)).eval()
    runtime = Runtime(getattr(args, "precision", "fp32"), getattr(args, "channels_last", False),
                      getattr(args, "compile", False))
    return use_runtime(prior, runtime)


# -- solvers: one flag per declared field ---------------------------------------------------------------------------
class _SolverField(argparse.Action):
    """Stores a solver field given on the command line as ``args.solver_fields[name] = (value, flag)``."""

    def __init__(self, *a: Any, param: Any = None, **kw: Any) -> None:
        self.param = param
        super().__init__(*a, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.param.kind == "bool":
            values = not (option_string or "").startswith("--no-")
        fields = dict(getattr(namespace, "solver_fields", None) or {})
        fields[self.param.name] = (values, option_string)
        namespace.solver_fields = fields


def _field_type(param: Any) -> Callable[[str], Any]:
    from ..params import parse_text

    def parse(text: str) -> Any:
        try:
            return parse_text(param, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = param.kind
    return parse


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return "none" if value is None else str(value)


def add_solver_args(p: argparse.ArgumentParser, *, multi: bool = False) -> None:
    """``--solver`` (``--solvers`` with ``multi``) and one flag per hyperparameter of every solver, with each
    solver's default in the help, generated from the dataclass declarations."""
    from ..solvers import SOLVERS
    from ..tools.presets import PRESET_KEYS

    g = p.add_argument_group("solver (every field of every solver; defaults are each paper's; RED-diff's come from "
                             "the prior's task preset when it has one, see `reddiff list priors`)")
    if multi:
        g.add_argument("--solvers", default="reddiff,dps,pigdm,ddrm",
                       help=f"comma-separated solvers among {', '.join(SOLVERS)} (default: %(default)s)")
    else:
        g.add_argument("--solver", default="reddiff", choices=list(SOLVERS), help="the solver (default: %(default)s)")
    owners: dict[str, list[tuple[str, Any]]] = {}
    for name, cls in SOLVERS.items():
        for param in cls.hyperparams():
            owners.setdefault(param.name, []).append((name, param))
    from ..solvers.reddiff import PROFILES

    g.add_argument("--profile", default="preset", choices=["preset", *PROFILES],
                   help="where RED-diff's settings not given here come from: preset (the prior's task preset, else "
                   "the paper's defaults), paper (the paper's defaults and Algorithm 1, presets ignored) or "
                   "reference (the paper's defaults with the official code's conventions: --timestep-spacing "
                   "stride, --returns last_x0, --data-term reference; see the README) (default: %(default)s)")
    g.set_defaults(solver_fields={})
    for field, entries in owners.items():
        param = entries[0][1]
        defaults = ", ".join(f"{s} {_fmt(q.default)}" for s, q in entries)
        preset = "; reddiff: the prior's preset first" if field in PRESET_KEYS else ""
        who = "" if len(entries) == len(SOLVERS) else f"[{', '.join(s for s, _ in entries)}] "
        helps: dict[str, list[str]] = {}
        for s, q in entries:
            helps.setdefault(q.help, []).append(s)
        meaning = param.help if len(helps) == 1 else "; ".join(f"{', '.join(n)}: {h}" for h, n in helps.items())
        help_text = f"{who}{meaning}; {param.accepted()} (default: {defaults}{preset})".replace("%", "%%")
        if param.kind == "bool":
            g.add_argument(param.flag, "--no-" + param.flag[2:], action=_SolverField, nargs=0, param=param,
                           default=argparse.SUPPRESS, help=help_text)
        else:
            g.add_argument(param.flag, action=_SolverField, param=param, type=_field_type(param),
                           metavar=param.kind.upper(), default=argparse.SUPPRESS, help=help_text)


def solver_from_args(args: argparse.Namespace, preset: dict[str, Any] | None = None, name: str | None = None,
                     *, strict: bool = True) -> Any:
    """The solver ``name`` (default ``--solver``) with the fields given on the command line; for RED-diff, those not
    given come from ``preset``. A field of another solver is an error when ``strict`` (``solve``), skipped
    otherwise (``compare`` runs several solvers)."""
    from ..solvers import SOLVERS

    name = name or args.solver
    cls = SOLVERS[name]
    own = {q.name for q in cls.hyperparams()}
    kwargs: dict[str, Any] = {}
    if name == "reddiff":
        from ..solvers.reddiff import PROFILES

        kwargs = {**PROFILES.get(getattr(args, "profile", "preset"), {}), **(preset or {})}
    for field, (value, flag) in (getattr(args, "solver_fields", None) or {}).items():
        if field not in own:
            if not strict:
                continue
            users = [n for n, c in SOLVERS.items() if field in {q.name for q in c.hyperparams()}]
            raise ReddiffError(f"{flag} does not apply to --solver {name} (it applies to {', '.join(users)})")
        kwargs[field] = value
    return cls(**kwargs)


def task_preset(args: argparse.Namespace, prior: Any, task: str, sigma_y: float) -> dict[str, Any]:
    """The prior's RED-diff preset for ``task`` at ``sigma_y`` ([-1, 1] units), or none when ``--profile`` says
    not to use presets."""
    from ..tools.presets import preset_for_prior

    return preset_for_prior(prior, task, sigma_y) if getattr(args, "profile", "preset") == "preset" else {}


# -- measurement and run --------------------------------------------------------------------------------------------
def add_measure_args(p: argparse.ArgumentParser) -> None:
    """``--task``, ``--sigma-y``, ``--noise``, ``--seed``."""
    g = p.add_argument_group("measurement")
    g.add_argument("--task", required=True, help="forward model, e.g. sr:4, inpaint-random:0.8, deblur-gauss, "
                   "jpeg:20, phase-retrieval; TASK+TASK composes (sr:4+inpaint-random:0.5); path/to/file.py:function "
                   "or module:function loads your own operator (see `reddiff list tasks`)")
    g.add_argument("--sigma-y", type=NONNEG_FLOAT, default=0.0,
                   help="measurement noise standard deviation in 0..1 pixel units, as papers report it (0.025 here is "
                   "0.05 in the [-1, 1] units used inside) (default: %(default)s)")
    g.add_argument("--noise", default="gaussian", metavar="MODEL",
                   help="measurement noise: gaussian (level --sigma-y) or poisson:PEAK (photon count of a white "
                   "pixel; leave --sigma-y at 0) (default: %(default)s)")
    g.add_argument("--outliers", type=number(float, minimum=0.0, what="--outliers"), default=0.0, metavar="FRACTION",
                   help="also replace this fraction of the simulated measurement's entries by salt-and-pepper "
                   "outliers (-1 or +1, 0 <= FRACTION < 1; meant for measurements in pixel values); the solver is "
                   "not told (see --robust) (default: %(default)s)")
    g.add_argument("--seed", type=NONNEG_INT, default=0,
                   help="base seed; each image gets its own seeds derived from it and its file name, so results do "
                   "not depend on the folder or the batch (default: %(default)s)")


def noise_from_args(args: argparse.Namespace) -> Any:
    """The noise model of ``--noise`` at ``--sigma-y`` (0..1 pixel units, converted to [-1, 1] units here, once)."""
    from ..noise import Outliers, parse_noise

    noise = parse_noise(args.noise, 2.0 * args.sigma_y)
    outliers = getattr(args, "outliers", 0.0)
    if outliers:
        if getattr(args, "measurement", None) is not None:
            raise ReddiffError("--outliers corrupts simulated measurements; a given --measurement has its own")
        noise = Outliers(noise, outliers)
    return noise


def add_run_args(p: argparse.ArgumentParser) -> Any:
    """``--overwrite``, ``--json``, ``--no-progress``; returns the group for more."""
    run = p.add_argument_group("run")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return run


def add_input_output(p: argparse.ArgumentParser) -> None:
    """``--input`` (clean images) and ``--output`` (a folder)."""
    p.add_argument("--input", metavar="CLEAN", required=True, help="clean image file or folder")
    p.add_argument("--output", metavar="DIR", required=True, help="output folder")


def output_path(text: str) -> Path:
    """The ``--output`` folder, refused at once when it is a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ReddiffError(f"output path {path} is a file; give a folder")
    return path


def load_clean(path: Path) -> Any:
    """A clean image as ``[1, 3, H, W]`` in [-1, 1], saying what was converted (grey -> RGB, alpha dropped)."""
    from ..io import load_image

    notices: list[str] = []
    x = load_image(path, channels=3, notices=notices)
    for n in notices:
        say(f"reddiff: note: {n}")
    return x


def simulated_jobs(files: list[Path], task: str, noise: Any, seed: int) -> list[Any]:
    """A job per clean image, its measurement simulated with the image's own seeds (as ``solve --input`` does)."""
    from ..experiment import Job, Seeds, simulate

    jobs = []
    for f in files:
        x = load_clean(f)
        seeds = Seeds.for_image(seed, f.stem)
        op, y = simulate(x, task, noise, seeds.operator)
        jobs.append(Job(f.stem, op, y, seeds, clean=x, source=f))
    return jobs


# -- helpers ----------------------------------------------------------------------------------------------------
def parse_list(text: str, accepted: list[str], what: str) -> list[str]:
    """A comma-separated list of names, each in ``accepted``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in accepted]
    if unknown or not names:
        raise ReddiffError(f"unknown {what}(s) {', '.join(unknown) or '(none)'}; accepted: {', '.join(accepted)}")
    return names


def unique_stems(files: list[Path]) -> None:
    """Refuse inputs whose names would share an output folder."""
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ReddiffError(f"two inputs share the name {f.stem!r} ({seen[f.stem].name}, {f.name}); rename one")
        seen[f.stem] = f


def progress(total: int, desc: str, disable: bool, position: int = 0) -> Any:
    """A tqdm progress bar on stderr."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=disable, leave=False, position=position, file=sys.stderr,
                dynamic_ncols=True)


def advance(bar: Any, info: Any) -> None:
    """One solver step on a progress bar made for ``solver.steps`` steps; its total follows the steps the solver
    reports (a ``stride`` grid may hold more than were asked for)."""
    if bar.total != info.num_steps:
        bar.total = info.num_steps
        bar.refresh()
    bar.update(1)


def say(msg: str) -> None:
    """A note for the user on stderr."""
    print(msg, file=sys.stderr)
