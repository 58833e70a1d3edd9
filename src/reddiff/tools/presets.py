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

Each task family (the name before ``:`` in a task string) holds a list of entries ordered by ``max_sigma_y``
(in [-1, 1] units); the first entry whose ``max_sigma_y`` is at least the problem's ``sigma_y`` (``null``: no
bound) applies. Settings the user gives explicitly always win over presets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ReddiffError

__all__ = ["PRESET_KEYS", "presets_path", "load_presets", "preset_for"]

#: The RED-diff fields a preset may set.
PRESET_KEYS = ("lam", "lr", "steps", "weighting", "init", "t_max", "lr_schedule")


def presets_path(weights: str | Path) -> Path:
    """Where the presets of a weights file live: ``<stem>.presets.json`` beside it."""
    p = Path(weights)
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


def preset_for(presets: dict[str, Any] | None, task: str, sigma_y: float) -> dict[str, Any]:
    """The preset values for a task string at noise level ``sigma_y`` ([-1, 1] units); empty if none apply."""
    if not presets:
        return {}
    family = task.split(":", 1)[0].strip().lower()
    entries = presets.get("tasks", {}).get(family)
    if not entries:
        return {}
    for e in entries:
        bound = e.get("max_sigma_y")
        if bound is None or sigma_y <= float(bound) + 1e-12:
            return {k: e[k] for k in PRESET_KEYS if k in e}
    return {k: entries[-1][k] for k in PRESET_KEYS if k in entries[-1]}
