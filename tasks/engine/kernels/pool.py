"""Pre-started kernels: a run never waits for a kernel to start, and never shares one.

Even a forked kernel takes a few hundred milliseconds to start and answer. A
``KernelPool`` keeps ``size`` fresh kernels started, and connected to, ahead of
demand; ``acquire`` hands one to exactly one run (the execute step shuts it down
afterwards, so no state leaks between runs) and starts a replacement in the
background. ``close`` shuts every idle kernel down; it also runs at interpreter exit.

The pool is off unless asked for: ``nbjobs serve --kernel-pool N``, ``run-notebooks``
(sized to its concurrency), or ``NBJOBS_KERNEL_POOL=N`` for any process that runs flows.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
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
    installed_kernels,
    new_kernel_manager,
    shutdown_kernel,
    start_kernel,
)

POOL_SIZE_ENV = "NBJOBS_KERNEL_POOL"
logger = logging.getLogger(__name__)


class KernelPool:
    """Fresh, already started kernels of one kernel spec, each used by a single run.

    Example:
        >>> pool = KernelPool("python3", size=2)
        >>> kernel = await pool.acquire()       # started, never used before
        >>> await execute_notebook_async(nb, origin, kernel="python3", workdir=w, started=kernel)
        >>> await pool.close()
    """

    def __init__(self, kernel: str = "python3", size: int = 2) -> None:
        ensure_kernel_installed(kernel)
        self.kernel = kernel
        self.size = max(size, 0)
        # a started kernel, or why one could not start (handed to the run that waits)
        self._ready: asyncio.Queue[StartedKernel | Exception] = asyncio.Queue()
        self._starting: set[asyncio.Task[None]] = set()
        # kernels the pool holds (not yet handed to a run), with their client once connected
        self._all: dict[AsyncKernelManager, AsyncKernelClient | None] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="nbjobs-pool-"))
        self._count = 0
        self._closed = False
        self.started = 0  # kernels started in all, for tests and benchmarks
        self.failed = 0  # starts that failed

    def fill(self) -> None:
        """Start kernels in the background until ``size`` are ready or starting."""
        while not self._closed and self._ready.qsize() + len(self._starting) < self.size:
            task = asyncio.ensure_future(self._start_one())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_one(self) -> None:
        self._count += 1
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
                return kernel
            await shutdown_kernel(kernel.km, kernel.kc)

    async def close(self) -> None:
        """Shut every kernel the pool still holds down, and stop starting new ones."""
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        await asyncio.gather(
            *(shutdown_kernel(km, kc) for km, kc in list(self._all.items())),
            return_exceptions=True,
        )
        self._all.clear()
        # kernels handed to runs are stopped in the background by the execute step
        from notebook_jobs.tasks.engine.execution import drain_background

        await drain_background()
        shutil.rmtree(self._dir, ignore_errors=True)

    def kill_now(self) -> None:
        """Synchronous last resort at interpreter exit: kill whatever is left."""
        for km in list(self._all):
            pgid = getattr(getattr(km, "provisioner", None), "pgid", None)
            if pgid:
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)


_pools: dict[tuple[int, str], KernelPool] = {}


def prestart(kernel: str = "python3") -> None:
    """Start this event loop's pool for ``kernel`` now, not on the first run (if on)."""
    if kernel not in installed_kernels():
        return
    pool = shared_pool(kernel)
    if pool is not None:
        pool.fill()


def pool_size() -> int:
    """The configured pool size (``$NBJOBS_KERNEL_POOL``); 0 means no pool."""
    try:
        return max(int(os.environ.get(POOL_SIZE_ENV, "0")), 0)
    except ValueError:
        return 0


def shared_pool(kernel: str) -> KernelPool | None:
    """This event loop's pool for ``kernel``, created on first use; None when off."""
    size = pool_size()
    if size == 0:
        return None
    key = (id(asyncio.get_running_loop()), kernel)
    pool = _pools.get(key)
    if pool is None or pool._closed:
        pool = KernelPool(kernel, size)
        _pools[key] = pool
        atexit.register(pool.kill_now)
    return pool


async def close_shared_pools() -> None:
    """Close the pools of the running loop (``nbjobs serve`` calls this on exit)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _pools if k[0] == loop_id]:
        await _pools.pop(key).close()
