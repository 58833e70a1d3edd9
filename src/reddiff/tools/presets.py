"""Task presets: default RED-diff hyperparameters for a prior, per task and noise level.

A prior may ship a presets file beside its weights (``<stem>.presets.json``)::

    {
      "provenance": {"script": "benchmarks/sweep_presets.py", "images": [...], "date": "..."},
      "tasks": {
        "sr": [{"max_sigma_y": 0.05, "lam": 0.25, "lr": 0.1, "steps": 100, "weighting": "linear"},
               {"max_sigma_y": null, "lam": 0.5, ...}],
        ...
      }
    }

Each task family holds a list of entries ordered by ``max_sigma_y`` (in [-1, 1] units); the first entry whose
``max_sigma_y`` is at least the problem's ``sigma_y`` (``null``: no bound) applies. Settings the user gives explicitly
always win over presets. The family is :attr:`reddiff.operators.TaskString.family`: the task name without its
parameter (``"sr"`` for ``"sr:4"``), and for a composite the parts' names joined by ``+``
(``"sr+inpaint-random"``).

Two rules fill the gaps, both in :func:`preset_for`:

- **aliases** (:data:`PRESET_ALIASES`): a family that cannot be swept on its own borrows another's presets
  (``inpaint-mask``, a mask the user draws, uses ``inpaint-freeform``'s brush strokes);
- **composites** without presets of their own combine their parts' (:func:`combine_presets`): the most steps and
  the widest timestep range of any part, the geometric mean of the parts' ``lam`` and ``lr`` (the sweeps move
  both on a log scale), and a categorical setting (``init``, ``weighting``, ``lr_schedule``) where all parts agree,
  otherwise ``pinv`` for ``init`` and the first part's value for the others. A composite with a part that has no
  preset has none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ReddiffError

__all__ = ["PRESET_ALIASES", "PRESET_KEYS", "combine_presets", "load_presets", "no_preset_notice", "preset_for",
           "preset_for_prior", "presets_path"]

#: The RED-diff fields a preset may set.
PRESET_KEYS = ("lam", "lr", "steps", "weighting", "init", "t_max", "lr_schedule")

#: family -> the family whose presets it uses when it has none of its own.
PRESET_ALIASES = {"inpaint-mask": "inpaint-freeform"}


def presets_path(weights: str | Path) -> Path:
    """Where the presets of a prior live: ``<stem>.presets.json`` beside a weights file, ``reddiff.presets.json``
    inside a model folder (diffusers)."""
    p = Path(weights)
    if p.is_dir():
        return p / "reddiff.presets.json"
    return p.with_name(p.stem + ".presets.json")


def load_presets(weights: str | Path | None) -> dict[str, Any] | None:
    """The presets of a weights file, or None when it has none.

    Raises:
        ReddiffError: when the presets file exists but is malformed.
    """
    if weights is None:
        return None
    path = presets_path(weights)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        tasks = data["tasks"]
        for name, entries in tasks.items():
            for e in entries:
                unknown = set(e) - set(PRESET_KEYS) - {"max_sigma_y", "note"}
                if unknown:
                    raise ValueError(f"{name}: unknown keys {sorted(unknown)}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ReddiffError(f"malformed presets file {path}: {exc}") from None
    return data


def _entry_for(entries: list[dict[str, Any]], sigma_y: float) -> dict[str, Any]:
    for e in entries:
        bound = e.get("max_sigma_y")
        if bound is None or sigma_y <= float(bound) + 1e-12:
            return {k: e[k] for k in PRESET_KEYS if k in e}
    return {k: entries[-1][k] for k in PRESET_KEYS if k in entries[-1]}


def _family_preset(tasks: dict[str, Any], family: str, sigma_y: float) -> dict[str, Any]:
    entries = tasks.get(family) or tasks.get(PRESET_ALIASES.get(family, ""))
    return _entry_for(entries, sigma_y) if entries else {}


def combine_presets(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The preset of a composite task from its parts' presets (see the module docstring); empty if a part has none."""
    if not parts or not all(parts):
        return {}
    out: dict[str, Any] = {}
    for key in PRESET_KEYS:
        values = [p[key] for p in parts if key in p]
        if len(values) < len(parts):  # a part leaves it to the solver's default: so does the composite
            continue
        if key == "steps":
            out[key] = max(values)
        elif key == "t_max":
            out[key] = None if any(v is None for v in values) else max(values)
        elif key in ("lam", "lr"):
            out[key] = float(f"{math.prod(float(v) for v in values) ** (1.0 / len(values)):.4g}")
        elif len(set(values)) == 1:
            out[key] = values[0]
        else:
            out[key] = "pinv" if key == "init" else values[0]
    return out


def preset_for(presets: dict[str, Any] | None, task: str, sigma_y: float) -> dict[str, Any]:
    """The preset values for a task string at noise level ``sigma_y`` ([-1, 1] units); empty if none apply."""
    from ..operators.registry import parse_task

    if not presets:
        return {}
    tasks = presets.get("tasks", {})
    parsed = parse_task(task)
    own = _family_preset(tasks, parsed.family, sigma_y)
    if own or not parsed.composite:
        return own
    return combine_presets([_family_preset(tasks, p.name, sigma_y) for p in parsed.parts])


def preset_for_prior(prior: Any, task: str, sigma_y: float) -> dict[str, Any]:
    """The preset of ``prior`` (from the presets file beside its weights, if any) for ``task`` at ``sigma_y``."""
    return preset_for(load_presets(prior.info.get("path")), task, sigma_y)


def no_preset_notice(prior: Any, task: str) -> str:
    """One line for a task that has no preset with this prior: what runs instead and how to choose settings."""
    from ..solvers.reddiff import RedDiff

    d = RedDiff()
    name = prior.info.get("name") or "this prior"
    return (f"no RED-diff preset for task {task!r} with prior {name!r}: using the paper's settings ({d.steps} steps, "
            f"lam {d.lam}, lr {d.lr}, {d.weighting} weighting); set --steps/--lam/--lr, or sweep presets for it with "
            "benchmarks/sweep_presets.py")
