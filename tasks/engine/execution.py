"""The execute step: run a parameterised notebook in a fresh kernel, cell by cell.

This module imports nothing of Prefect's, so the same code runs inside a flow on
this machine and as a Slurm job on a compute node. It drives nbclient cell by cell
(papermill has already injected the parameters) to report progress per cell, honour
a cell selection, a per-cell and a whole-run timeout, and to keep the partial
notebook whatever happens: the notebook object is filled in place as outputs arrive.

A fresh kernel is started for the run unless the caller hands in a ``StartedKernel``
(from a ``KernelPool``); either way it is shut down after the run.

Cancelled from outside (``Task.cancel``: a cancelled flow run, SIGTERM in a Slurm job),
it ends the kernel, keeps the partial notebook and raises ``RunCancelledError`` with
the report of what ran: from here on a cancellation is a typed error of our tree.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nbclient.exceptions import DeadKernelError
from nbformat import NotebookNode

from notebook_jobs.blocks.exceptions import KernelStartError, RunCancelledError
from notebook_jobs.tasks.engine.cells import (
    EventCallback,
    RunProgress,
    add_error_banners,
    clear_outputs,
    files_snapshot,
    run_plan,
)
from notebook_jobs.tasks.engine.kernels.client import (
    KERNEL_STARTUP_TIMEOUT_SECONDS,
    MAX_CELL_OUTPUT_BYTES,
    CappedClient,
    StartedKernel,
    ensure_kernel_installed,
    kernel_pid,
    measure_resources,
    move_kernel,
    new_kernel_manager,
    sample_memory,
    shutdown_kernel,
    start_kernel,
)
from notebook_jobs.tasks.engine.outputs import read_scraps
from notebook_jobs.tasks.engine.secrets import MIN_MASKED_CHARS, RunSecrets
from notebook_jobs.tasks.models import (
    CellReport,
    ErrorInfo,
    ExecutionOutcome,
    ExecutionReport,
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

    Returns:
        The report; ``nb`` holds the executed (possibly partial) notebook.

    Raises:
        UnknownKernelError: ``kernel`` is not installed (checked before starting).
    """
    if started is None:
        ensure_kernel_installed(kernel)
    workdir.mkdir(parents=True, exist_ok=True)
    progress = RunProgress()
    before = await asyncio.to_thread(files_snapshot, workdir)
    started_at = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    startup_timeout = start_timeout_seconds or KERNEL_STARTUP_TIMEOUT_SECONDS

    clear_outputs(nb)
    plan: list[tuple[int, int | None]] = []
    for position, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        source_index = origin[position]
        if source_index is None or selected is None or source_index in selected:
            plan.append((position, source_index))
        elif source_index is not None:
            progress.reports[source_index] = CellReport(
                index=source_index, status="skipped", tags=list(cell.metadata.get("tags", []))
            )
    runnable = plan
    total = sum(1 for _, i in runnable if i is not None)

    ipc_dir = Path(tempfile.mkdtemp(prefix="nbjobs-k-"))
    km = started.km if started else new_kernel_manager(kernel, ipc_dir / "k")
    client = CappedClient(
        nb,
        km=km,
        kernel_name=kernel,
        timeout=cell_timeout_seconds,
        startup_timeout=startup_timeout,
        resources={"metadata": {"path": str(workdir)}},
        allow_errors=False,
        record_timing=True,
        shutdown_kernel="immediate",
    )
    client.max_output_bytes = max_output_bytes
    current: dict[str, int | None] = {"index": None}

    async def run_cells() -> None:
        # Not nbclient's async_setup_kernel: it installs SIGINT/SIGTERM handlers on the
        # loop, which would take cancellation signals away from Prefect and the CLI.
        t_kernel = time.perf_counter()
        try:
            if started is None:
                try:
                    client.kc = await start_kernel(km, workdir, startup_timeout, environment)
                except (OSError, RuntimeError) as error:
                    # what jupyter_client raises for a kernel that cannot start (a
                    # missing executable, one that exits or never answers); only here
                    raise KernelStartError(
                        f"the kernel {kernel!r} failed to start: {error}"
                    ) from error
            else:
                client.kc = started.kc
                # a pre-started kernel began elsewhere: move it to this run's folder
                await move_kernel(started.kc, workdir, environment)
            progress.kernel_start_seconds = round(time.perf_counter() - t_kernel, 4)
            pid = kernel_pid(client)
            sampler = asyncio.create_task(sample_memory(pid, progress.memory)) if pid else None
            try:
                await run_plan(client, runnable, total, progress, on_event, current, secrets)
            finally:
                measured = measure_resources(pid, progress.memory) if pid else None
                if measured is not None:
                    progress.resources = measured
                if sampler:
                    sampler.cancel()
        finally:
            if started is not None and started.retire and progress.status == "completed":
                # a pooled kernel that finished cleanly: its pool stops it off the
                # critical path
                started.retire()
            else:
                # leave client.kc set: nbclient's own watcher task may still look at it
                await shutdown_kernel(km, client.kc)
            await asyncio.to_thread(shutil.rmtree, ipc_dir, ignore_errors=True)

    # Our own deadline rather than asyncio.wait_for: killing a busy kernel makes
    # nbclient raise DeadKernelError, which wait_for would report instead of the timeout.
    loop = asyncio.get_running_loop()
    running = asyncio.ensure_future(run_cells())
    deadline_hit: list[int | None] = []

    def on_deadline() -> None:
        deadline_hit.append(current["index"])
        running.cancel()

    timer = loop.call_later(timeout_seconds, on_deadline) if timeout_seconds else None
    cancelled_from_outside = False
    try:
        await running
    except asyncio.CancelledError:
        # Cancelled from outside (a cancelled flow run, SIGTERM in a Slurm job): the
        # kernel is already shut down. From here on it is our own typed error, raised
        # below with what ran; the cancellation itself ends here.
        cancelled_from_outside = not deadline_hit
        task = asyncio.current_task()
        if cancelled_from_outside and task is not None and task.cancelling():
            task.uncancel()
    except DeadKernelError as error:
        progress.status = "kernel_died"
        progress.error = ErrorInfo(name="KernelDiedError", message=f"the kernel died: {error}")
    except KernelStartError as error:
        progress.status = "kernel_died"
        progress.error = ErrorInfo(name="KernelStartError", message=str(error))
    finally:
        if timer is not None:
            timer.cancel()
    if cancelled_from_outside:
        index = current["index"]
        progress.status = "cancelled"
        progress.error = ErrorInfo(
            name="Cancelled",
            message="the run was cancelled"
            + (f" while running cell {index}" if index is not None else ""),
            cell_index=index,
        )
        if index is not None:
            progress.reports[index] = CellReport(index=index, status="cancelled")
    if deadline_hit:
        index = deadline_hit[0]
        progress.status = "timed_out"
        progress.error = ErrorInfo(
            name="NotebookTimeoutError",
            message=f"the run exceeded its timeout of {timeout_seconds:g} s"
            + (
                f" while running cell {index}"
                if index is not None
                else " while starting the kernel"
            ),
            cell_index=index,
        )
        if index is not None:
            progress.reports[index] = CellReport(index=index, status="timed_out")

    for position, source_index in runnable:
        if source_index is not None and source_index not in progress.reports:
            progress.reports[source_index] = CellReport(
                index=source_index,
                status="not_run",
                tags=list(nb.cells[position].metadata.get("tags", [])),
            )
    for position, source_index in enumerate(origin):
        report = progress.reports.get(source_index) if source_index is not None else None
        meta: dict[str, Any] = {"index": source_index}
        if report is not None:
            meta.update(status=report.status, duration_seconds=report.duration_seconds)
        nb.cells[position].metadata["nbjobs"] = meta

    after = await asyncio.to_thread(files_snapshot, workdir, progress.notes)
    written = sorted(path for path, stamp in after.items() if before.get(path) != stamp)
    if progress.status == "failed" and progress.error_position is not None:
        # as papermill marks a failed run (and not a timed-out one, which it stops)
        add_error_banners(
            nb,
            progress.error_position,
            nb.cells[progress.error_position].get("execution_count"),
        )
    if secrets is not None:  # a cell cut short (timeout, cancel) was not masked yet
        secrets.mask_notebook(nb)
        if progress.error is not None:
            progress.error = ErrorInfo.model_validate(
                secrets.mask_value(progress.error.model_dump())
            )
        if secrets.unmasked:
            progress.notes.append(
                f"secret parameter(s) {', '.join(secrets.unmasked)} are shorter than "
                f"{MIN_MASKED_CHARS} characters and were not masked in the outputs"
            )
    outputs, scrap_notes = read_scraps(nb)
    progress.notes.extend(scrap_notes)
    if client._truncated:
        progress.notes.append(
            "output truncated in cell(s) "
            + ", ".join(str(origin[p]) for p in sorted(client._truncated) if p < len(origin))
        )
    nb.metadata["nbjobs"] = {
        "status": progress.status,
        "kernel": kernel,
        "error": progress.error.model_dump() if progress.error else None,
    }
    outcome = ExecutionReport(
        status=progress.status,
        error=progress.error,
        kernel=kernel,
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
    if cancelled_from_outside:
        raise RunCancelledError(
            progress.error.message if progress.error else "the run was cancelled",
            cell_index=progress.error.cell_index if progress.error else None,
            execution=ExecutionOutcome(report=outcome).model_dump(mode="json"),
        )
    return outcome
