"""The execute step: run a parameterised notebook in a fresh kernel, cell by cell.

This module imports nothing of Prefect's, so the same code runs inside a flow on
this machine and as a Slurm job on a compute node. It drives nbclient cell by cell
(papermill has already injected the parameters) to report progress per cell, honour
a cell selection, a per-cell and a whole-run timeout, and to keep the partial
notebook whatever happens: the notebook object is filled in place as outputs arrive.

``KernelRun`` is one notebook's run in one kernel: it starts the kernel (or takes one a
``KernelPool`` started), runs the cells against its deadline, is cancelled from outside,
and reports; the kernel is shut down after the run, whatever happened.

Cancelled from outside (``Task.cancel``: a cancelled flow run, SIGTERM in a Slurm job),
it ends the kernel, keeps the partial notebook and raises ``RunCancelledError`` with
the report of what ran: from here on a cancellation is a typed error of our tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbclient.exceptions import DeadKernelError
from nbformat import NotebookNode

from notebook_jobs.blocks.exceptions import KernelStartError, RunCancelledError
from notebook_jobs.tasks.engine.cells import (
    EventCallback,
    RunProgress,
    clear_outputs,
    files_snapshot,
    run_plan,
)
from notebook_jobs.tasks.engine.finish import finish_notebook, mark_cells
from notebook_jobs.tasks.engine.kernels.client import (
    KERNEL_STARTUP_TIMEOUT_SECONDS,
    MAX_CELL_OUTPUT_BYTES,
    CappedClient,
    StartedKernel,
    ensure_kernel_installed,
    kernel_pid,
    move_kernel,
    new_kernel_manager,
    shutdown_kernel,
    start_kernel,
)
from notebook_jobs.tasks.engine.resume import KeepKernel, Resume, carry_earlier
from notebook_jobs.tasks.engine.secrets import RunSecrets
from notebook_jobs.tasks.models import (
    CellReport,
    ErrorInfo,
    ExecutionOutcome,
    ExecutionReport,
    RunStatus,
)

if TYPE_CHECKING:
    from jupyter_client.manager import AsyncKernelManager


@dataclass
class KernelRun:
    """One notebook's run in one kernel: ``await KernelRun(...).execute()``.

    ``execute`` starts the kernel (or moves a pre-started one to ``workdir``), runs the
    selected cells in place in ``nb`` under the whole run's deadline, and returns the
    report; ``nb`` holds the executed, possibly partial, notebook. Cancelled from outside
    it raises ``RunCancelledError`` carrying the report. See ``execute_notebook_async``
    for the arguments.
    """

    nb: NotebookNode
    origin: list[int | None]
    kernel: str
    workdir: Path
    selected: set[int] | None = None
    cell_timeout_seconds: float | None = None
    timeout_seconds: float | None = None
    on_event: EventCallback | None = None
    started: StartedKernel | None = None
    max_output_bytes: int = MAX_CELL_OUTPUT_BYTES
    start_timeout_seconds: float | None = None
    secrets: RunSecrets | None = None
    environment: dict[str, str] | None = None
    memory_limit_bytes: int | None = None
    re_executed_before: int | None = None  # a cold repair: cells before it run again
    keep: KeepKernel | None = None  # offered the kernel of a run that failed in a cell
    resume: Resume | None = None  # a warm repair: ``started`` is the failed run's kernel
    progress: RunProgress = field(default_factory=RunProgress)
    deadline_passed: bool = False
    deadline_cell: int | None = None  # running when it passed (None: the kernel was starting)
    km: AsyncKernelManager = field(init=False)
    ipc_dir: Path = field(init=False)  # the kernel's private sockets, removed after it

    async def execute(self) -> ExecutionReport:
        """Run the notebook; the report of what ran (see the class).

        Raises:
            UnknownKernelError: The kernel is not installed (checked before starting).
            RunCancelledError: Cancelled from outside; ``execution`` holds the report.
        """
        if self.started is None:
            ensure_kernel_installed(self.kernel)
        self.workdir.mkdir(parents=True, exist_ok=True)
        before = await asyncio.to_thread(files_snapshot, self.workdir)
        started_at = datetime.now(timezone.utc)
        t_start = time.perf_counter()
        clear_outputs(self.nb)
        if self.resume is not None:
            carry_earlier(self.nb, self.origin, self.resume, self.progress.reports)
        plan = self._plan()
        client = self._client()
        cancelled = await self._run_until_deadline(client, plan)
        if cancelled:
            self._ended("cancelled", "Cancelled", "the run was cancelled")
        if self.deadline_passed:
            self._ended(
                "timed_out",
                "NotebookTimeoutError",
                f"the run exceeded its timeout of {self.timeout_seconds:g} s",
                starting=" while starting the kernel",
            )
        report = await self._report(client, plan, before, started_at, t_start)
        if cancelled:
            raise RunCancelledError(
                report.error.message if report.error else "the run was cancelled",
                cell_index=report.error.cell_index if report.error else None,
                execution=ExecutionOutcome(report=report).model_dump(mode="json"),
            )
        return report

    def _plan(self) -> list[tuple[int, int | None]]:
        """The code cells to run: (position in ``nb``, index in the input notebook); the
        others are reported skipped (or, going on in a failed run's kernel, as they ran)."""
        plan: list[tuple[int, int | None]] = []
        for position, cell in enumerate(self.nb.cells):
            if cell.cell_type != "code":
                continue
            source_index = self.origin[position]
            if self.resume is not None and (
                source_index in self.progress.reports
                or (source_index is None and not self.resume.rerun_parameters)
            ):
                continue  # ran in the kernel before
            if source_index is None or self.selected is None or source_index in self.selected:
                plan.append((position, source_index))
            else:
                self.progress.reports[source_index] = CellReport(
                    index=source_index, status="skipped", tags=list(cell.metadata.get("tags", []))
                )
        return plan

    def _client(self) -> CappedClient:
        self.ipc_dir = Path(tempfile.mkdtemp(prefix="nbjobs-k-"))
        self.km = (
            self.started.km if self.started else new_kernel_manager(self.kernel, self.ipc_dir / "k")
        )
        client = CappedClient(
            self.nb,
            km=self.km,
            kernel_name=self.kernel,
            timeout=self.cell_timeout_seconds,
            startup_timeout=self.start_timeout_seconds or KERNEL_STARTUP_TIMEOUT_SECONDS,
            resources={"metadata": {"path": str(self.workdir)}},
            allow_errors=False,
            record_timing=True,
            shutdown_kernel="immediate",
        )
        client.max_output_bytes = self.max_output_bytes
        return client

    async def _start(self, client: CappedClient) -> None:
        """A new kernel in ``workdir``, or the pre-started one moved there.

        Raises:
            KernelStartError: jupyter_client could not start it (a missing executable,
                one that exits or never answers).
        """
        # Not nbclient's async_setup_kernel: it installs SIGINT/SIGTERM handlers on the
        # loop, which would take cancellation signals away from Prefect and the CLI.
        t_kernel = time.perf_counter()
        if self.started is None:
            try:
                client.kc = await start_kernel(
                    self.km,
                    self.workdir,
                    self.start_timeout_seconds or KERNEL_STARTUP_TIMEOUT_SECONDS,
                    self.environment,
                )
            except (OSError, RuntimeError) as error:  # what jupyter_client raises, here only
                raise KernelStartError(
                    f"the kernel {self.kernel!r} failed to start: {error}"
                ) from error
        else:
            client.kc = self.started.kc
            await move_kernel(self.started.kc, self.workdir, self.environment)
        self.progress.kernel_start_seconds = round(time.perf_counter() - t_kernel, 4)

    async def _run_cells(self, client: CappedClient, plan: list[tuple[int, int | None]]) -> None:
        progress = self.progress
        try:
            await self._start(client)
            memory = progress.memory
            memory.limit_bytes, memory.pid = self.memory_limit_bytes, kernel_pid(client)
            watching = (
                asyncio.create_task(memory.follow(self.km.interrupt_kernel, self._kill))
                if memory.pid
                else None
            )
            total = sum(1 for _, index in plan if index is not None)
            try:
                await run_plan(client, plan, total, progress, self.on_event, self.secrets)
            finally:
                measured = memory.resources()
                if measured is not None:
                    progress.resources = measured
                if watching:
                    watching.cancel()
        finally:
            kept = (
                self.keep is not None
                and progress.status == "failed"
                and progress.memory.exceeded is None
                and client.kc is not None
                and self.keep(StartedKernel(self.km, client.kc), self.ipc_dir)  # type: ignore[arg-type]
            )  # kept alive for a repair, its sockets with it
            if not kept:
                await self._end_kernel(client)

    async def _end_kernel(self, client: CappedClient) -> None:
        """The kernel is done with: a pooled one that finished cleanly goes back to its
        pool to be stopped off the critical path; any other is shut down now."""
        if self.started is not None and self.started.retire and self.progress.status == "completed":
            self.started.retire()
        else:
            # leave client.kc set: nbclient's own watcher task may still look at it
            await shutdown_kernel(self.km, client.kc)
        await asyncio.to_thread(shutil.rmtree, self.ipc_dir, ignore_errors=True)

    async def _kill(self) -> None:
        """End the kernel now (a cell that went on past the memory limit's interrupt)."""
        with contextlib.suppress(Exception):  # already gone
            await self.km.shutdown_kernel(now=True)

    async def _run_until_deadline(
        self, client: CappedClient, plan: list[tuple[int, int | None]]
    ) -> bool:
        """Run the cells under the whole run's deadline; whether it was cancelled from
        outside (the kernel is shut down either way)."""
        # Our own deadline rather than asyncio.wait_for: killing a busy kernel makes
        # nbclient raise DeadKernelError, which wait_for would report instead of the timeout.
        running = asyncio.ensure_future(self._run_cells(client, plan))

        def on_deadline() -> None:
            self.deadline_passed, self.deadline_cell = True, self.progress.running
            running.cancel()

        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.timeout_seconds, on_deadline) if self.timeout_seconds else None
        try:
            await running
        except asyncio.CancelledError:
            if self.deadline_passed:
                return False
            # Cancelled from outside (a cancelled flow run, SIGTERM in a Slurm job): from
            # here on it is our own typed error, raised with what ran; the cancellation
            # itself ends here.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            return True
        except DeadKernelError as error:
            self.progress.status = "kernel_died"
            self.progress.error = ErrorInfo(
                name="KernelDiedError", message=f"the kernel died: {error}"
            )
        except KernelStartError as error:
            self.progress.status = "kernel_died"
            self.progress.error = ErrorInfo(name="KernelStartError", message=str(error))
        finally:
            if timer is not None:
                timer.cancel()
        return False

    def _ended(self, status: RunStatus, name: str, message: str, starting: str = "") -> None:
        """The run ended from outside its cells (a deadline, a cancellation) in the cell
        that was running, which is reported so."""
        index = self.deadline_cell if status == "timed_out" else self.progress.running
        self.progress.status = status
        where = f" while running cell {index}" if index is not None else starting
        self.progress.error = ErrorInfo(name=name, message=message + where, cell_index=index)
        if index is not None:
            self.progress.reports[index] = CellReport(index=index, status=status)

    async def _report(
        self,
        client: CappedClient,
        plan: list[tuple[int, int | None]],
        before: dict[str, Any],
        started_at: datetime,
        t_start: float,
    ) -> ExecutionReport:
        """The report, and the notebook finished as a reader expects it: each cell's
        status in its metadata, papermill's banners, secrets masked, scraps read."""
        nb, progress, secrets = self.nb, self.progress, self.secrets
        for position, source_index in plan:
            if source_index is not None and source_index not in progress.reports:
                progress.reports[source_index] = CellReport(
                    index=source_index,
                    status="not_run",
                    tags=list(nb.cells[position].metadata.get("tags", [])),
                )
        mark_cells(self.nb, self.origin, progress.reports, self.re_executed_before)
        after = await asyncio.to_thread(files_snapshot, self.workdir, progress.notes)
        written = sorted(path for path, stamp in after.items() if before.get(path) != stamp)
        outputs = finish_notebook(self.nb, self.origin, progress, self.kernel, secrets, client)
        return ExecutionReport(
            status=progress.status,
            error=progress.error,
            kernel=self.kernel,
            cells=sorted(progress.reports.values(), key=lambda r: r.index),
            outputs=outputs,
            resources=progress.resources,
            files=written,
            notes=progress.notes,
            started_at=started_at,
            finished_at=datetime.now(timezone.utc),
            kernel_start_seconds=progress.kernel_start_seconds,
            execute_seconds=round(time.perf_counter() - t_start, 4),
        )


async def execute_notebook_async(
    nb: NotebookNode,
    origin: list[int | None],
    *,
    kernel: str,
    workdir: Path,
    selected: set[int] | None = None,
    cell_timeout_seconds: float | None = None,
    timeout_seconds: float | None = None,
    on_event: EventCallback | None = None,
    started: StartedKernel | None = None,
    max_output_bytes: int = MAX_CELL_OUTPUT_BYTES,
    start_timeout_seconds: float | None = None,
    secrets: RunSecrets | None = None,
    environment: dict[str, str] | None = None,
    memory_limit_bytes: int | None = None,
    re_executed_before: int | None = None,
    keep: KeepKernel | None = None,
    resume: Resume | None = None,
) -> ExecutionReport:
    """Execute ``nb`` in place in a fresh kernel, with ``workdir`` as its working folder.

    Args:
        nb: The parameterised notebook; outputs are written into it as they arrive.
        origin: For each cell of ``nb``, its index in the input notebook (``None``
            for the injected parameters cell), as returned by ``inject_parameters``.
        kernel: Kernel name; must be installed unless ``started`` is given.
        workdir: The notebook's working folder; files it writes there are reported.
        selected: Input-notebook indices to run, or ``None`` for all.
        cell_timeout_seconds: Limit per cell, or ``None``.
        timeout_seconds: Limit for the whole execution, kernel start included, or ``None``.
        on_event: Called before and after each cell (may be async).
        started: An already-started kernel to use (shut down afterwards).
        max_output_bytes: Output one cell may keep; the rest is dropped with a note.
        start_timeout_seconds: Limit for the kernel to start (default 60 s).
        secrets: Secret parameters: the injected cell's real source, run in place of
            the masked one, and the values masked in every output.
        environment: Variables the kernel gets on top of this process's environment
            (the caller's, for a run handed to a worker).
        memory_limit_bytes: Resident memory the kernel's process tree may reach: the
            cell that reaches it is stopped and the run fails (``kernels.memory``).
        re_executed_before: A cold repair's cell: the cells before it that ran are
            marked ``re_executed`` (in their report and their metadata).
        keep: Offered the kernel (and its sockets' folder) when the run fails in a
            cell; returns whether it took it (``kernels.kept``), else it is shut down.
        resume: A warm repair: go on in ``started`` (a failed run's kernel).

    Returns:
        The report; ``nb`` holds the executed (possibly partial) notebook.

    Raises:
        UnknownKernelError: ``kernel`` is not installed (checked before starting).
        RunCancelledError: Cancelled from outside; what ran is in its ``execution``.
    """
    run = KernelRun(
        nb,
        origin,
        kernel=kernel,
        workdir=workdir,
        selected=selected,
        cell_timeout_seconds=cell_timeout_seconds,
        timeout_seconds=timeout_seconds,
        on_event=on_event,
        started=started,
        max_output_bytes=max_output_bytes,
        start_timeout_seconds=start_timeout_seconds,
        secrets=secrets,
        environment=environment,
        memory_limit_bytes=memory_limit_bytes,
        re_executed_before=re_executed_before,
        keep=keep,
        resume=resume,
    )
    return await run.execute()
