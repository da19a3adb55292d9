"""Executors: where the execute step of a run happens, the one place local and Slurm runs differ.

Everything before (staging) and after (HTML, upload, artifacts, the result) is the same
code for both. An executor takes a ``StagedNotebook``, runs it, leaves
``notebook.ipynb`` (complete or partial) in the run folder and returns one
``ExecutionOutcome``. Cell events reach the caller the same way from both.

- ``LocalExecutor`` (here) runs kernels on this machine. It owns its fork servers, its
  kernel pools and the kernels of failed runs kept for their repair: a worker makes one
  for its whole life, a batch one for the batch (its fork servers borrowed from the
  worker's, if any).
- ``SlurmExecutor`` (``tasks/slurm_executor.py``) submits the run as a batch job to a
  ``SlurmCluster`` and owns the ``SlurmCommands`` it speaks to it through.

Whoever makes an executor hands it to runs explicitly, in its ``Runtime``
(``tasks/runtime.py``: ``using_runtime``, or ``using_executor`` for the executor alone, a
``ContextVar`` that follows the tasks started inside), and the ``run-notebook`` flow
takes the current one. Nothing is found through the environment, a loop id or a
module-level registry.

A run cancelled from outside (its flow run cancelled) is not an exception here: the
kernel is stopped, or the job ``scancel``-ed and waited for, and the outcome's report
says ``cancelled`` with the partial notebook in place, for the flow to store.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

import nbformat
from jupyter_client.kernelspec import KernelSpecManager

from notebook_jobs.blocks.exceptions import RunCancelledError
from notebook_jobs.blocks.settings import settings
from notebook_jobs.tasks.engine.cells import EventCallback
from notebook_jobs.tasks.engine.execution import execute_notebook_async
from notebook_jobs.tasks.engine.kernels.client import (
    StartedKernel,
    ensure_kernel_installed,
    environment_overrides,
    installed_kernels,
    is_python_kernel,
    kernel_environment,
    needs_new_interpreter,
)
from notebook_jobs.tasks.engine.kernels.fork import ForkServers, fork_plan, forking_with
from notebook_jobs.tasks.engine.kernels.kept import KeptKernel, KernelKeeper, release_folders
from notebook_jobs.tasks.engine.kernels.pool import KernelPool
from notebook_jobs.tasks.engine.layout import (
    EXECUTED_NAME,
    run_folder,
)
from notebook_jobs.tasks.engine.resume import KeepKernel, resume_of
from notebook_jobs.tasks.engine.staged import StagedNotebook
from notebook_jobs.tasks.models import ExecutionOutcome

StatusCallback = Callable[[str], None]


class Executor(Protocol):
    """Where a staged notebook runs."""

    checks_kernel_here: bool  # False: the kernel is checked where the job runs

    def run_folder(self, run_key: str) -> Path:
        """The run's folder: where it is staged, and where the notebook is written."""

    def starting(self, staged: StagedNotebook) -> str:
        """What the run is doing before its first cell, for its progress."""

    async def execute(
        self,
        staged: StagedNotebook,
        *,
        cell_timeout_seconds: float | None = None,
        timeout_seconds: float | None = None,
        on_event: EventCallback | None = None,
        on_status: StatusCallback | None = None,
        log: Any = None,
    ) -> ExecutionOutcome:
        """Run the notebook; ``notebook.ipynb`` is in the run folder afterwards."""


_environment: ContextVar[dict[str, str] | None] = ContextVar("nbjobs_environment", default=None)


_process_executor: list[LocalExecutor] = []  # at most one: ``process_executor``'s
_process_lock = threading.Lock()


def process_executor() -> LocalExecutor:
    """The executor of runs made in this process outside any other (``await
    run_notebook(...)`` or ``run_notebook_sync`` in a script, a notebook, a test).

    It forks kernels from a fork server of its own (unless
    ``NBJOBS_KERNEL_LAUNCHER=spawn``): the first run spawns its kernel while the server
    imports ipykernel beside it; every later run takes a kernel forked ahead, when the
    run before it started, and moved to its folder. It keeps no kernel pool, which
    would tie it to one event loop, and each ``asyncio.run`` has its own. Its fork
    server stops when the process exits (``ForkServers`` closes at exit). A process
    that runs one notebook and exits (``nbjobs run`` on a configured server) makes a
    ``LocalExecutor(fork=False)`` of its own instead: the server would cost more than
    it saves.
    """
    with _process_lock:
        if not _process_executor:
            _process_executor.append(LocalExecutor(fork_ahead=True))
        return _process_executor[0]


def caller_environment() -> dict[str, str] | None:
    """The environment of the caller whose run this is, made current by
    ``using_caller_environment``; None for runs nobody on this machine handed over."""
    return _environment.get()


@contextlib.contextmanager
def using_caller_environment(environment: dict[str, str] | None) -> Iterator[None]:
    """Runs started in this block give their kernels ``environment`` on top of ours
    (a worker running the run its caller's ``nbjobs run`` handed it, as papermill's
    kernel inherits its caller's environment)."""
    token = _environment.set(environment)
    try:
        yield
    finally:
        _environment.reset(token)


class LocalExecutor:
    """Runs notebooks in kernels on this machine; owns its fork servers and kernel pools.

    Args:
        pool_size: Kernels of each kernel spec kept started ahead of demand (0: none).
            A pool belongs to the event loop it first ran on.
        fork: Fork ipykernels from warm fork servers (default: unless
            ``NBJOBS_KERNEL_LAUNCHER=spawn``). Off for a process that runs one notebook.
        fork_servers: Borrow these fork servers (another executor's) instead of owning.
        fork_ahead: Have its own fork servers fork each run's next kernel ahead
            (``ForkServers(ahead=True)``): for an owner without a pool.
        keep_failed_seconds: How long the kernel of a run that failed in a cell waits,
            alive, for that run's repair (``kernels.kept``); 0: not kept (a run's own
            ``keep_failed_kernel_seconds`` decides for it, where there is a keeper).

    Example:
        >>> async with LocalExecutor(pool_size=2) as executor:
        ...     with using_executor(executor):  # tasks.runtime
        ...         await run_notebook("examples/report.ipynb")
    """

    checks_kernel_here = True

    def __init__(
        self,
        *,
        pool_size: int = 0,
        fork: bool | None = None,
        fork_servers: ForkServers | None = None,
        fork_ahead: bool = False,
        keep_failed_seconds: float = 0.0,
    ) -> None:
        self.pool_size = max(pool_size, 0)
        self.keeper = KernelKeeper(keep_failed_seconds)
        self._owns_fork_servers = fork_servers is None
        if fork_servers is None and (
            fork if fork is not None else settings().kernel_launcher == "fork"
        ):
            fork_servers = ForkServers(settings().kernel_preload, ahead=fork_ahead)
        self.fork_servers = fork_servers
        self._pools: dict[str, KernelPool] = {}
        self._python_kernels: dict[str, bool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        forking = "fork" if self.fork_servers else "spawn"
        return f"LocalExecutor(pool_size={self.pool_size}, {forking})"

    async def __aenter__(self) -> LocalExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def run_folder(self, run_key: str) -> Path:
        return run_folder(run_key)

    def starting(self, staged: StagedNotebook) -> str:
        return f"starting kernel {staged.kernel}"

    def pool(self, kernel: str) -> KernelPool | None:
        """This executor's pool for ``kernel``, made on first use; None without pools.

        Raises:
            RuntimeError: Called on another event loop than the pools' own.
        """
        if self.pool_size == 0:
            return None
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "this LocalExecutor's kernel pools belong to another event loop: "
                "make one executor per loop"
            )
        if not self._poolable(kernel):
            return None
        pool = self._pools.get(kernel)
        if pool is None or pool.closed:
            pool = self._pools[kernel] = KernelPool(kernel, self.pool_size, self.fork_servers)
        return pool

    def _poolable(self, kernel: str) -> bool:
        """Whether ``kernel`` can be started ahead of its run: Python kernels only, as a
        pre-started kernel is moved to its run's folder by running Python in it. Other
        kernels start for their run, in its folder (forked where they can be)."""
        if kernel not in self._python_kernels:
            ensure_kernel_installed(kernel)
            self._python_kernels[kernel] = is_python_kernel(kernel)
        return self._python_kernels[kernel]

    def prestart(self, kernel: str = "python3") -> None:
        """Start the pool for ``kernel`` now, or its fork server: not on the first run."""
        specs = installed_kernels()
        if kernel not in specs:
            return
        pool = self.pool(kernel)
        if pool is not None:
            pool.fill()
        elif self.fork_servers is not None:
            plan = fork_plan(KernelSpecManager().get_kernel_spec(kernel).argv)
            if plan is not None:
                self.fork_servers.ready(plan[0], kernel_environment())  # starts it

    async def execute(
        self,
        staged: StagedNotebook,
        *,
        cell_timeout_seconds: float | None = None,
        timeout_seconds: float | None = None,
        on_event: EventCallback | None = None,
        on_status: StatusCallback | None = None,
        log: Any = None,
    ) -> ExecutionOutcome:
        notebook = nbformat.from_dict(staged.notebook)  # each attempt starts from the staged copy
        environment = environment_overrides(caller_environment())
        # a kernel that must start with other interpreter settings than ours is spawned
        fresh = needs_new_interpreter(environment)
        kept = await self._kept_for(staged)
        with forking_with(None if fresh else self.fork_servers):
            pool = None if fresh or kept else self.pool(staged.kernel)
            started = kept.started if kept else await pool.acquire() if pool else None
            try:
                report = await execute_notebook_async(
                    notebook,
                    staged.cell_origin,
                    kernel=staged.kernel,
                    workdir=staged.workdir,
                    selected=staged.selected,
                    cell_timeout_seconds=cell_timeout_seconds,
                    timeout_seconds=timeout_seconds,
                    on_event=on_event,
                    started=started,
                    start_timeout_seconds=staged.start_timeout_seconds,
                    secrets=staged.secrets,
                    environment=environment,
                    memory_limit_bytes=staged.memory_limit_bytes,
                    re_executed_before=None if kept else staged.repair_from_cell,
                    keep=self._keeping(staged, notebook, kept),
                    resume=resume_of(staged, kept),
                )
            except RunCancelledError as cancelled:
                report = ExecutionOutcome.model_validate(cancelled.execution).report
        if kept is not None and not staged.kernel_kept:  # its kernel has ended with this run
            await release_folders(kept)
        elif kept is not None and kept.run_dir is not None:  # kept again, for this run
            await asyncio.to_thread(shutil.rmtree, kept.run_dir, ignore_errors=True)
        if staged.repair_of is not None:
            report.repair_mode = "warm" if kept else "cold"
        # shielded: a second cancellation must not lose the partial notebook
        await asyncio.shield(
            asyncio.to_thread(nbformat.write, notebook, staged.run_dir / EXECUTED_NAME)
        )
        return ExecutionOutcome(report=report)

    async def _kept_for(self, staged: StagedNotebook) -> KeptKernel | None:
        """A repair's kept kernel, its files copied into the repair's working folder (the
        kernel moves there when it starts the run)."""
        if staged.repair_of is None:
            return None
        kept = self.keeper.take(staged.repair_of, staged.kernel)
        if kept is not None and kept.workdir != staged.workdir and kept.workdir.is_dir():
            await asyncio.to_thread(
                shutil.copytree, kept.workdir, staged.workdir, dirs_exist_ok=True, symlinks=True
            )
        return kept

    def _keeping(
        self, staged: StagedNotebook, notebook: nbformat.NotebookNode, kept: KeptKernel | None
    ) -> KeepKernel | None:
        """What offers the kernel of ``staged``'s run to the keeper if the run fails in a
        cell; None when it would not be kept."""
        seconds = staged.keep_failed_seconds
        if seconds is None:
            seconds = self.keeper.seconds
        if not seconds or staged.run_id is None:
            return None
        run_id = staged.run_id

        def keep(started: StartedKernel, ipc_dir: Path) -> bool:
            staged.kernel_kept = self.keeper.keep(
                run_id,
                KeptKernel(
                    started=started,
                    kernel=staged.kernel,
                    workdir=staged.workdir,
                    notebook=notebook,
                    ipc_dir=kept.ipc_dir if kept else ipc_dir,
                    run_dir=staged.run_dir,
                ),
                seconds,
            )
            return staged.kernel_kept

        return keep

    async def close(self) -> None:
        """Stop the pools' kernels and, if owned, the fork servers.

        From another event loop than the pools' own (theirs has ended), their kernels
        are killed instead: the pools' tasks cannot be awaited any more.
        """
        await self.keeper.close()
        pools, self._pools = list(self._pools.values()), {}
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            for pool in pools:
                pool.kill_now()
        else:
            await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)
        self._loop = None
        if self._owns_fork_servers and self.fork_servers is not None:
            await asyncio.to_thread(self.fork_servers.close)
