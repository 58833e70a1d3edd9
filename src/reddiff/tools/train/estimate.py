"""The one line, said after the first few steps of a long run, of how long the run will take."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

__all__ = ["ESTIMATE_STEPS", "ESTIMATE_MIN_STEPS", "ESTIMATE_MIN_SECONDS", "Estimate", "estimate_line", "say_stderr"]

#: The estimate is said once, after this many timed steps (the first step, which pays for warm-up, is not timed)...
ESTIMATE_STEPS = 5
#: ...for runs of at least this many steps...
ESTIMATE_MIN_STEPS = 50
#: ...with at least this many seconds left.
ESTIMATE_MIN_SECONDS = 60.0


def _duration(seconds: float) -> str:
    if seconds < 90 * 60:
        return f"{max(round(seconds / 60), 1)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def estimate_line(seconds_per_step: float, steps: int, device: torch.device, resumed: bool = False) -> str:
    """The time estimate of a run, with a hint to use a GPU when it runs on the CPU.

    Args:
        seconds_per_step: measured time of one step.
        steps: steps this run does.
        device: where it runs.
        resumed: the run continues a checkpoint (its steps are "more steps").

    Returns:
        E.g. ``train: 0.84 s/step on cpu (2 threads): 20,000 steps take about 4.7 h; use a CUDA GPU (--device
        cuda) for long runs``.
    """
    where = f"cpu ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)
    line = (f"train: {seconds_per_step:.3g} s/step on {where}: {steps:,}{' more' if resumed else ''} steps take about "
            f"{_duration(seconds_per_step * steps)}")
    return line + ("; use a CUDA GPU (--device cuda) for long runs" if device.type == "cpu" else "")


class Estimate:
    """Times the steps after the first one of a run and says once how long the run takes (see the thresholds).

    Args:
        first: the step the run starts from (0, or the resumed checkpoint's step).
        last: the step it ends at.
        device: where it runs.
        say: receives the line.
    """

    def __init__(self, first: int, last: int, device: torch.device, say: Callable[[str], None]) -> None:
        self.first, self.last, self.device, self.say = first, last, device, say
        self.done = last - first < ESTIMATE_MIN_STEPS
        self.start = 0.0

    def tick(self, step: int) -> None:
        """Call after each step with the number of steps done."""
        if self.done:
            return
        if step == self.first + 1:
            self.start = time.perf_counter()
        elif step == self.first + 1 + ESTIMATE_STEPS:
            self.done = True
            per_step = (time.perf_counter() - self.start) / ESTIMATE_STEPS
            if per_step * (self.last - step) >= ESTIMATE_MIN_SECONDS:
                self.say(estimate_line(per_step, self.last - self.first, self.device, resumed=self.first > 0))


def say_stderr(line: str) -> None:
    """Print ``line`` to stderr, above a progress bar rather than through it."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)
