"""Pre-started kernels: a run never waits for a kernel to start, and never shares one.

Even a forked kernel takes a few hundred milliseconds to start and answer. A
``KernelPool`` keeps ``size`` fresh kernels started, and connected to, ahead of
demand; ``acquire`` hands one to exactly one run (the run shuts it down afterwards,
so no state leaks between runs) and starts a replacement in the background.

A pool has one owner, the ``LocalExecutor`` that made it, and belongs to the event
loop it first ran on (its queue and clients are that loop's). ``close`` shuts every
idle kernel down and waits for the kernels runs handed back; ``kill_now`` is the
last resort at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager

from notebook_jobs.tasks.engine.kernels.client import (
    KERNEL_STARTUP_TIMEOUT_SECONDS,
    StartedKernel,
    ensure_kernel_installed,
    new_kernel_manager,
    shutdown_kernel,
    start_kernel,
)
from notebook_jobs.tasks.engine.kernels.fork import ForkServers, forking_with

logger = logging.getLogger(__name__)


class KernelPool:
    """Fresh, already started kernels of one kernel spec, each used by a single run.

    Example:
        >>> pool = KernelPool("python3", size=2, fork_servers=ForkServers())
        >>> kernel = await pool.acquire()       # started, never used before
        >>> await execute_notebook_async(nb, origin, kernel="python3", workdir=w, started=kernel)
        >>> await pool.close()
    """

    def __init__(
        self, kernel: str = "python3", size: int = 2, fork_servers: ForkServers | None = None
    ) -> None:
        ensure_kernel_installed(kernel)
        self.kernel = kernel
        self.size = max(size, 0)
        self.fork_servers = fork_servers
        # a started kernel, or why one could not start (handed to the run that waits)
        self._ready: asyncio.Queue[StartedKernel | Exception] = asyncio.Queue()
        self._starting: set[asyncio.Task[None]] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        # kernels the pool holds (not yet handed to a run), with their client once connected
        self._all: dict[AsyncKernelManager, AsyncKernelClient | None] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="nbjobs-pool-"))
        self._count = 0
        self._closed = False
        self.started = 0  # kernels started in all, for tests and benchmarks
        self.failed = 0  # starts that failed
        atexit.register(self.kill_now)

    @property
    def closed(self) -> bool:
        return self._closed

    def fill(self) -> None:
        """Start kernels in the background until ``size`` are ready or starting."""
        while not self._closed and self._ready.qsize() + len(self._starting) < self.size:
            task = asyncio.ensure_future(self._start_one())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_one(self) -> None:
        self._count += 1
        with forking_with(self.fork_servers):
            km = new_kernel_manager(self.kernel, self._dir / f"k{self._count}")
            self._all[km] = None
            try:
                # cwd is the pool's folder; the execute step moves the kernel to the run's
                kc = await asyncio.wait_for(
                    start_kernel(km, self._dir), KERNEL_STARTUP_TIMEOUT_SECONDS + 5
                )
            except Exception as error:
                self._all.pop(km, None)
                await shutdown_kernel(km, None)
                # A waiting run must hear of it: it starts a kernel of its own, whose
                # failure (if the spec is broken) then ends the run with the reason.
                logger.warning("kernel pool: could not start a %r kernel: %s", self.kernel, error)
                self.failed += 1
                if not self._closed:
                    await self._ready.put(error)
                return
        self._all[km] = kc
        self.started += 1
        if self._closed:
            await shutdown_kernel(km, kc)
            return
        await self._ready.put(StartedKernel(km, kc))

    async def acquire(self) -> StartedKernel | None:
        """A started kernel no run has used; starts its replacement in the background.

        Returns:
            The kernel, or ``None`` when the pool could not start one (it logged why):
            the caller starts its own, and a broken kernel spec then fails the run
            with the reason instead of leaving it waiting for ever.
        """
        if self._closed:
            raise RuntimeError("the kernel pool is closed")
        self.fill()
        while True:
            kernel = await self._ready.get()
            if isinstance(kernel, Exception):
                return None
            self._all.pop(kernel.km, None)  # from here on, the run owns it and stops it
            self.fill()
            if await kernel.km.is_alive():
                kernel.retire = functools.partial(self._retire, kernel.km, kernel.kc)
                return kernel
            await shutdown_kernel(kernel.km, kernel.kc)

    def _retire(self, km: AsyncKernelManager, kc: AsyncKernelClient) -> None:
        task = asyncio.ensure_future(shutdown_kernel(km, kc))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Shut every kernel the pool holds or retired down; start no new ones."""
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        await asyncio.gather(
            *(shutdown_kernel(km, kc) for km, kc in list(self._all.items())),
            *self._retiring,
            return_exceptions=True,
        )
        self._all.clear()
        await asyncio.to_thread(shutil.rmtree, self._dir, ignore_errors=True)
        atexit.unregister(self.kill_now)

    def kill_now(self) -> None:
        """Synchronous last resort at interpreter exit: kill whatever is left."""
        for km in list(self._all):
            pgid = getattr(getattr(km, "provisioner", None), "pgid", None)
            if pgid:
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)
