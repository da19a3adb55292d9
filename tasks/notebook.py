"""Prefect tasks that stage, execute and render a notebook.

The work itself is in ``tasks.engine.staging`` (pure checks and papermill's parameter
injection) and ``tasks.engine.execution`` (the nbclient loop, free of Prefect so a Slurm
job can run it); these tasks add what Prefect users see: a progress artifact
updated after each cell, one log line per cell, and retries of dead kernels.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from notebook_jobs.blocks.exceptions import KernelDiedError, WorkingFolderError
from notebook_jobs.tasks.engine.execution import CellEvent, ExecutionCancelled
from notebook_jobs.tasks.engine.execution import execute_notebook_async as _execute
from notebook_jobs.tasks.engine.kernels.client import ensure_kernel_installed
from notebook_jobs.tasks.engine.kernels.pool import shared_pool
from notebook_jobs.tasks.engine.staging import (
    check_parameters,
    fetch_notebook_source,
    inject_parameters,
    kernel_name_of,
    parse_notebook,
    select_cells,
    stage_input_files,
)
from notebook_jobs.tasks.models import ExecutionReport, NotebookRequest
from notebook_jobs.tasks.progress_artifact import ProgressArtifact

KERNEL_RETRIES_ENV = "NBJOBS_KERNEL_RETRIES"
DEFAULT_KERNEL_RETRIES = 1
KERNEL_RETRY_DELAY_SECONDS = 2
PROGRESS_INTERVAL_SECONDS = 0.5
INPUT_NAME = "input.ipynb"
EXECUTED_NAME = "notebook.ipynb"
HTML_NAME = "notebook.html"
WORK_FOLDER = "work"

ProgressListener = Callable[[CellEvent], None]
_listeners: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> None:
    """Also send cell events to ``listener`` (the CLI's progress bar uses this)."""
    _listeners.append(listener)


def remove_progress_listener(listener: ProgressListener) -> None:
    """Stop sending cell events to ``listener``."""
    if listener in _listeners:
        _listeners.remove(listener)


def artifact_key(name: str, kind: str) -> str:
    """A stable artifact key per notebook, so the UI keeps a history ('report-summary')."""
    stem = re.sub(r"\.ipynb$", "", name, flags=re.IGNORECASE).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", stem).strip("-") or "notebook"
    return f"{slug[:60]}-{kind}"


class StagedNotebook:
    """A checked, parameterised notebook ready to execute, and its run folder.

    A plain class on purpose: Prefect walks dataclasses and models passed between
    tasks, which would copy the whole notebook on every call.
    """

    def __init__(
        self,
        *,
        name: str,
        origin: str,
        kernel: str,
        notebook: NotebookNode,
        cell_origin: list[int | None],
        selected: set[int] | None,
        run_dir: Path,
        cwd: Path | None = None,
        start_timeout_seconds: float | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.name = name
        self.origin = origin
        self.kernel = kernel
        self.notebook = notebook
        self.cell_origin = cell_origin
        self.selected = selected
        self.run_dir = run_dir
        self.cwd = cwd
        self.start_timeout_seconds = start_timeout_seconds
        self.notes = notes or []

    def __repr__(self) -> str:
        return f"StagedNotebook(name={self.name!r}, kernel={self.kernel!r}, run_dir={self.run_dir})"

    @property
    def workdir(self) -> Path:
        """The kernel's working folder: ``cwd`` if one was asked for, else the run's own."""
        return self.cwd or self.files_dir

    @property
    def files_dir(self) -> Path:
        """Where the files the run wrote are kept for the store: the run's own folder."""
        return self.run_dir / WORK_FOLDER


def stage(request: NotebookRequest, run_dir: Path, *, check_kernel: bool = True) -> StagedNotebook:
    """Fetch, check and parameterise a notebook; write ``input.ipynb`` to ``run_dir``.

    Raises:
        NotebookInputError: Anything about the request that must be fixed first.
    """
    source = fetch_notebook_source(request.notebook)
    nb = parse_notebook(source)
    kernel = kernel_name_of(nb, request.kernel)
    cwd = working_folder(request.cwd)
    if check_kernel:
        ensure_kernel_installed(kernel)
    notes = check_parameters(
        nb,
        request.parameters,
        kernel,
        language=request.language,
        strict=request.strict_parameters,
    )
    selected = select_cells(nb, request.cells)
    parameterised, cell_origin = inject_parameters(
        nb,
        request.parameters,
        kernel,
        language=request.language,
        report_mode=request.report_mode,
    )
    parameterised.metadata.papermill["input_path"] = source.origin
    (run_dir / WORK_FOLDER).mkdir(parents=True, exist_ok=True)
    stage_input_files(request.input_files, cwd or run_dir / WORK_FOLDER, replace=cwd is None)
    (run_dir / INPUT_NAME).write_bytes(source.data)
    return StagedNotebook(
        name=source.name,
        origin=source.origin,
        kernel=kernel,
        notebook=parameterised,
        cell_origin=cell_origin,
        selected=selected,
        run_dir=run_dir,
        cwd=cwd,
        start_timeout_seconds=request.start_timeout_seconds,
        notes=notes,
    )


def working_folder(cwd: str | None) -> Path | None:
    """The requested working folder, checked; ``None`` for the run's own fresh folder.

    Raises:
        WorkingFolderError: It is not a folder on this machine.
    """
    if cwd is None:
        return None
    folder = Path(cwd).expanduser()
    if not folder.is_dir():
        raise WorkingFolderError(
            f"cwd {cwd!r} is not a folder on the machine that runs the notebook", path=cwd
        )
    return folder.resolve()


@task(name="stage-notebook", cache_policy=NO_CACHE)
async def stage_notebook(
    request: NotebookRequest, run_dir: Path, check_kernel: bool = True
) -> StagedNotebook:
    """Fetch, validate and parameterise the notebook, before any kernel starts.

    Async on purpose: Prefect runs a sync task inside an async flow through a thread
    hand-off that costs about 40 ms; the fetch runs in a thread here instead.

    Example:
        >>> await stage_notebook(NotebookRequest(notebook="examples/report.ipynb"), Path("/tmp/r"))
        StagedNotebook(name='report.ipynb', ...)
    """
    staged = await asyncio.to_thread(stage, request, run_dir, check_kernel=check_kernel)
    get_run_logger().info(
        "staged %s (kernel %s, %d cells, parameters: %s, working folder %s)",
        staged.name,
        staged.kernel,
        len(staged.notebook.cells),
        ", ".join(sorted(request.parameters)) or "none",
        staged.cwd or "of its own",
    )
    for note in staged.notes:
        get_run_logger().warning("%s", note)
    return staged


def retry_if_retryable(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only failures a second attempt can fix: a dead kernel, not a notebook's error."""
    outcome = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    return isinstance(outcome, KernelDiedError)


def kernel_retries() -> int:
    """How often a dead kernel is retried (``$NBJOBS_KERNEL_RETRIES``, default 1)."""
    return int(os.environ.get(KERNEL_RETRIES_ENV, DEFAULT_KERNEL_RETRIES))


@task(
    name="execute-notebook",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_if_retryable,
    retry_delay_seconds=KERNEL_RETRY_DELAY_SECONDS,
)
async def execute_notebook(
    staged: StagedNotebook,
    cell_timeout_seconds: float | None = None,
    timeout_seconds: float | None = None,
) -> ExecutionReport:
    """Execute a staged notebook in a fresh kernel; write ``notebook.ipynb`` in any case.

    Publishes a progress artifact updated after every cell and logs one line per cell
    with its stdout and stderr. A dead kernel raises ``KernelDiedError`` (retried);
    every other outcome, a notebook's own exception included, is returned as a report.

    Example:
        >>> report = await execute_notebook(staged, timeout_seconds=600)
        >>> report.status
        'completed'
    """
    logger = get_run_logger()
    progress = ProgressArtifact(
        artifact_key(staged.name, "progress"), f"{staged.name}: starting kernel {staged.kernel}"
    )
    last_update = [time.monotonic()]
    running: list[CellEvent | None] = [None]
    delayed: set[asyncio.Task[None]] = set()

    def show_running(event: CellEvent) -> None:
        last_update[0] = time.monotonic()
        progress.show(
            100.0 * event.done / max(event.total, 1),
            f"{staged.name}: running cell {event.index} ({event.done + 1}/{event.total})",
        )

    async def show_if_still_running(event: CellEvent, delay: float) -> None:
        await asyncio.sleep(delay)
        if running[0] is event:
            show_running(event)

    async def on_event(event: CellEvent) -> None:
        for listener in list(_listeners):
            listener(event)
        if event.phase == "start":
            # One API call per cell would cost more than a fast cell takes: a cell is
            # shown at once if the last update is older than PROGRESS_INTERVAL_SECONDS,
            # else as soon as it has been running that long.
            running[0] = event
            waited = time.monotonic() - last_update[0]
            if waited >= PROGRESS_INTERVAL_SECONDS or not event.done:
                show_running(event)
            else:
                later = asyncio.ensure_future(
                    show_if_still_running(event, PROGRESS_INTERVAL_SECONDS - waited)
                )
                delayed.add(later)
                later.add_done_callback(delayed.discard)
            return
        running[0] = None
        report = event.report
        if report is None:
            return
        logger.info(
            "cell %d (%d/%d) %s in %.3f s",
            event.index,
            event.done,
            event.total,
            report.status,
            report.duration_seconds or 0.0,
        )
        if event.stdout.strip():
            logger.info("cell %d stdout:\n%s", event.index, event.stdout.rstrip())
        if event.stderr.strip():
            logger.warning("cell %d stderr:\n%s", event.index, event.stderr.rstrip())

    notebook = nbformat.from_dict(staged.notebook)  # each attempt starts from the staged copy
    pool = shared_pool(staged.kernel)
    try:
        started = await pool.acquire() if pool else None
        report = await _execute(
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
        )
    except ExecutionCancelled as stop:
        # The flow run is being cancelled: the kernel is down; hand back what ran so
        # the flow stores the partial notebook and ends Cancelled.
        logger.warning("cancelled: %s", stop)
        report = stop.report
    for pending in list(delayed):
        pending.cancel()
    done = sum(1 for c in report.cells if c.status == "ok")
    ran = sum(1 for c in report.cells if c.status != "skipped")
    # the last progress update travels while the notebook is written
    closing = asyncio.ensure_future(
        progress.close(
            100.0 if report.success else 100.0 * done / max(ran, 1),
            f"{staged.name}: {report.status}",
        )
    )
    await asyncio.to_thread(nbformat.write, notebook, staged.run_dir / EXECUTED_NAME)
    try:
        await closing
    except Exception as failure:  # progress reporting must never lose a run
        logger.warning("could not update the progress artifact: %s", failure)
    if report.status == "kernel_died":
        error = report.error
        raise KernelDiedError(
            error.message if error else "the kernel died",
            cell_index=error.cell_index if error else None,
            result={"execution": report.model_dump(mode="json")},
        )
    return report


_exporters = threading.local()


def _html_exporter() -> Any:
    """One HTMLExporter per thread: building one loads its templates (~0.2 s), and
    concurrent runs render in different threads."""
    exporter = getattr(_exporters, "html", None)
    if exporter is None:
        from nbconvert import HTMLExporter  # imported late: the import costs ~0.3 s

        exporter = _exporters.html = HTMLExporter()
    return exporter


def warm_up_html() -> None:
    """Import nbconvert and load the HTML templates now (about 0.5 s), not in a first run."""
    _html_exporter()


def render_html(run_dir: Path) -> Path | None:
    """Render ``notebook.ipynb`` in ``run_dir`` to ``notebook.html`` with nbconvert."""

    source = run_dir / EXECUTED_NAME
    if not source.exists():
        return None
    with warnings.catch_warnings():
        # glued scraps have no HTML representation; nbconvert warns about each
        warnings.simplefilter("ignore", UserWarning)
        body, _ = _html_exporter().from_filename(str(source))
    target = run_dir / HTML_NAME
    target.write_text(body, encoding="utf-8")
    return target
