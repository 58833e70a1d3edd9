"""Running under ``torchrun``: the process group, and ranks that agree on errors so that a failure on one rank
stops every rank with the same one line (printed by rank 0) instead of a hang or a collective's traceback."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ReddiffError

__all__ = ["Ranks"]

T = TypeVar("T")


class Ranks:
    """This process's place among ``torchrun``'s processes (one process: rank 0 of 1, nothing initialised).

    Used as a context manager: the process group (NCCL with one GPU per rank on CUDA, gloo on the CPU) is created on
    entry when ``WORLD_SIZE > 1`` and destroyed on exit.

    Args:
        device: the device asked for; on CUDA each rank takes the GPU of its ``LOCAL_RANK``.
    """

    def __init__(self, device: Any) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.device = device
        self._dist: Any = None

    def __enter__(self) -> Ranks:
        if self.world <= 1:
            return self
        import torch
        import torch.distributed as dist

        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(hours=2))
        self._dist = dist
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._dist is not None and self._dist.is_initialized():
            if exc[0] is None:  # every rank done with the last collective before any tears its connections down
                # (a rank that closes them while another still reads its share aborts that one in gloo's thread)
                self._dist.barrier()
            self._dist.destroy_process_group()
        self._dist = None

    def mine(self, index: int) -> bool:
        """Whether the ``index``-th item (in the common order) is this rank's."""
        return index % self.world == self.rank

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated in rank order (this rank's alone without a process group)."""
        if self._dist is None:
            return list(items)
        parts: list[Any] = [None] * self.world
        self._dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it failed on any rank, fail on every rank with the first failure's message.

        The failing rank re-raises its own exception (so ``--debug`` shows its traceback); the others raise a
        :class:`ReddiffError` naming that rank.
        """
        error: BaseException | None = None
        result: Any = None
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - every failure is shared with the other ranks
            error = exc
        if self._dist is None:
            if error is not None:
                raise error
            return result
        message = None if error is None else (str(error) if isinstance(error, ReddiffError)
                                              else f"{type(error).__name__}: {error}")
        statuses = self.gather([message])
        failed = [(r, m) for r, m in enumerate(statuses) if m is not None]
        if error is not None:
            raise error
        if failed:
            rank, text = failed[0]
            raise ReddiffError(f"rank {rank}: {text}")
        return result
