"""Failed runs' kernels, kept alive for a while so that a repair can go on in them.

A run that fails in a cell leaves a kernel that holds everything the cells before it
computed. With a ``KernelKeeper`` (a worker's ``LocalExecutor`` has one), the kernel is
not shut down: it waits, under the failed run's flow run id, for a repair of that run
(``nbjobs repair``), which runs the remaining cells in it, or until ``seconds`` have
passed. At most ``count`` kernels are kept, and at most ``memory_bytes`` of their
resident memory in all: a kernel that would pass either is shut down at once (the oldest
kept one makes room for a newer one when only the count is short), and its run's repair
is cold (the cells before run again).

Prefect-free, like the rest of the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from nbformat import NotebookNode

from notebook_jobs.tasks.engine.kernels.client import StartedKernel, kernel_pid, shutdown_kernel
from notebook_jobs.tasks.engine.kernels.memory import tree_rss

DEFAULT_COUNT = 4
DEFAULT_MEMORY_BYTES = 4 * 1024**3


@dataclass
class KeptKernel:
    """A failed run's kernel, and what a repair needs from that run.

    Attributes:
        started: The kernel and its connected client.
        kernel: Its kernel spec's name.
        workdir: Its working folder (the failed run's).
        notebook: The failed run's executed notebook: the outputs of the cells before.
        ipc_dir: Its private folder of sockets and connection file, removed with it.
        run_dir: The failed run's folder, kept for the kernel's files and removed with it.
    """

    started: StartedKernel
    kernel: str
    workdir: Path
    notebook: NotebookNode
    ipc_dir: Path
    run_dir: Path | None = None
    kept_at: float = field(default_factory=time.monotonic)
    _expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def resident_bytes(self) -> int:
        """The kernel tree's resident memory now (0 once it is gone)."""
        pid = kernel_pid(self.started)
        return (tree_rss(pid) or 0) if pid else 0


class KernelKeeper:
    """Keeps failed runs' kernels for their repair (see the module).

    Args:
        seconds: How long a kernel waits for its repair.
        count: The most kernels kept at once.
        memory_bytes: The most resident memory they keep in all.
    """

    def __init__(
        self,
        seconds: float,
        count: int = DEFAULT_COUNT,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> None:
        self.seconds = seconds
        self.count = count
        self.memory_bytes = memory_bytes
        self._kept: dict[str, KeptKernel] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, run_id: str, kept: KeptKernel, seconds: float | None = None) -> bool:
        """Keep ``kept`` for the repair of ``run_id`` for ``seconds`` (default: the
        keeper's); False (the caller shuts it down) when it would pass the memory bound,
        or there is no room at all."""
        seconds = self.seconds if seconds is None else seconds
        if self.count <= 0 or seconds <= 0:
            return False
        size = kept.resident_bytes
        while len(self._kept) >= self.count:  # the oldest makes room
            oldest = min(self._kept, key=lambda key: self._kept[key].kept_at)
            self._release_later(self._kept.pop(oldest))
        if size + sum(k.resident_bytes for k in self._kept.values()) > self.memory_bytes:
            return False
        loop = asyncio.get_running_loop()
        kept._expiry = loop.call_later(seconds, self._expire, run_id)
        self._kept[run_id] = kept
        return True

    def take(self, run_id: str, kernel: str) -> KeptKernel | None:
        """The kept kernel of ``run_id`` (now the caller's to run and end), if it is still
        kept and runs ``kernel``."""
        kept = self._kept.get(run_id)
        if kept is None or kept.kernel != kernel:
            return None
        del self._kept[run_id]
        if kept._expiry is not None:
            kept._expiry.cancel()
        return kept

    def _expire(self, run_id: str) -> None:
        kept = self._kept.pop(run_id, None)
        if kept is not None:
            self._release_later(kept)

    def _release_later(self, kept: KeptKernel) -> None:
        task = asyncio.ensure_future(release(kept))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def close(self) -> None:
        """Shut every kept kernel down (the worker stops)."""
        kept, self._kept = list(self._kept.values()), {}
        for one in kept:
            if one._expiry is not None:
                one._expiry.cancel()
        await asyncio.gather(
            *(release(one) for one in kept), *self._releasing, return_exceptions=True
        )


async def release(kept: KeptKernel) -> None:
    """Shut the kept kernel down and remove what it kept (its sockets, the run's folder)."""
    with contextlib.suppress(Exception):  # gone already
        await shutdown_kernel(kept.started.km, kept.started.kc)
    await release_folders(kept)


async def release_folders(kept: KeptKernel) -> None:
    """Remove the folders a kept kernel held (its sockets, its run's), once it has ended."""
    await asyncio.to_thread(shutil.rmtree, kept.ipc_dir, ignore_errors=True)
    if kept.run_dir is not None:
        await asyncio.to_thread(shutil.rmtree, kept.run_dir, ignore_errors=True)
