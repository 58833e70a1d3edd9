"""Measuring what a run costs: peak memory on CUDA (max allocated) and on the CPU (peak RSS growth)."""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

import torch

__all__ = ["PeakMemory", "rss_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``) so RSS growth measures this block's peak."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    """Resident set size of this process in bytes (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Context manager measuring the peak memory a block adds.

    On CUDA devices: ``torch.cuda.max_memory_allocated`` above the allocation at entry. On the CPU: the peak
    resident set size above the RSS at entry (freed heap memory is first returned to the OS, so earlier blocks do not
    hide this one's allocations), sampled by a background thread every ``interval`` seconds (so very short spikes
    can be missed).

    Attributes:
        peak_bytes: the measured peak growth, set on exit.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._max = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_memory()
            self._base = self._max = rss_bytes()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(torch.cuda.max_memory_allocated(self.device) - self._base, 0)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._max = max(self._max, rss_bytes())
            self.peak_bytes = max(self._max - self._base, 0)

    @property
    def peak_mb(self) -> float:
        """The peak growth in MiB."""
        return self.peak_bytes / 2**20
