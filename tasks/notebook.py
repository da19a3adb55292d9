"""Prefect tasks that stage and execute a notebook, and render the result.

The work itself is in ``tasks/engine`` (staging, execution, kernels: free of Prefect,
so a Slurm job runs it too), and where it runs is an executor's business
(``tasks/executors.py``). These tasks add what Prefect users see, the same for every
executor: a progress artifact updated after each cell, one log line per cell, and
retries of dead kernels.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.states import Failed

from notebook_jobs.blocks.exceptions import KernelDiedError, SecretParameterError
from notebook_jobs.blocks.settings import settings
from notebook_jobs.tasks.engine.cells import CellEvent
from notebook_jobs.tasks.engine.layout import EXECUTED_NAME, HTML_NAME
from notebook_jobs.tasks.engine.outputs import SCRAP_PREFIX
from notebook_jobs.tasks.engine.staged import StagedNotebook, stage
from notebook_jobs.tasks.executors import Executor
from notebook_jobs.tasks.models import ExecutionOutcome, NotebookRequest
from notebook_jobs.tasks.progress_artifact import ProgressArtifact
from notebook_jobs.tasks.runtime import current_runtime

KERNEL_RETRY_DELAY_SECONDS = 2


def artifact_key(name: str, kind: str) -> str:
    """A stable artifact key per notebook, so the UI keeps a history ('report-summary')."""
    stem = re.sub(r"\.ipynb$", "", name, flags=re.IGNORECASE).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", stem).strip("-") or "notebook"
    return f"{slug[:60]}-{kind}"


def _log_streams(logger: Any, event: CellEvent) -> None:
    """A cell's prints in the run's log: stdout at INFO, stderr at WARNING."""
    if event.stdout.strip():
        logger.info("cell %d stdout:\n%s", event.index, event.stdout.rstrip())
    if event.stderr.strip():
        logger.warning("cell %d stderr:\n%s", event.index, event.stderr.rstrip())


@task(name="stage-notebook", cache_policy=NO_CACHE)
async def stage_notebook(
    request: NotebookRequest,
    run_dir: Path,
    check_kernel: bool = True,
    context: dict[str, Any] | None = None,
) -> StagedNotebook:
    """Fetch, validate and parameterise the notebook, before any kernel starts.

    Async on purpose: Prefect runs a sync task inside an async flow through a thread
    hand-off that costs about 40 ms; the fetch runs in a thread here instead.

    Example:
        >>> await stage_notebook(NotebookRequest(notebook="examples/report.ipynb"), Path("/tmp/r"))
        StagedNotebook(name='report.ipynb', ...)
    """
    loop = asyncio.get_running_loop()

    def resolve(parameter: str, block: str) -> Any:  # from the staging thread, on this loop
        return asyncio.run_coroutine_threadsafe(load_secret(parameter, block), loop).result()

    staged = await asyncio.to_thread(
        stage, request, run_dir, check_kernel=check_kernel, resolve=resolve, context=context
    )
    get_run_logger().info(
        "staged %s (kernel %s, %d code cells to run, parameters: %s, %s)",
        staged.name,
        staged.kernel,
        staged.cells_to_run,
        ", ".join(sorted(staged.parameters)) or "none",
        # which folder is the run's cwd parameter: a path says nothing to a reader of the UI
        "in the folder it was given (cwd)" if staged.cwd else "in a folder of its own",
    )
    for note in staged.notes:
        get_run_logger().warning("%s", note)
    return staged


async def load_secret(parameter: str, block: str) -> Any:
    """The value a Prefect ``Secret`` block holds, for a secret parameter.

    Raises:
        SecretParameterError: No Secret block has that name.
    """
    from prefect.blocks.system import Secret

    try:
        secret: Secret[Any] = await Secret.aload(block)
    except ValueError as error:  # Prefect's "Unable to find block document named ..."
        raise SecretParameterError(
            f"parameter {parameter!r} refers to the Secret block {block!r}, which does not "
            f"exist on this Prefect server; create it: Secret(value=...).save({block!r}) or "
            "`prefect block create secret`",
            parameter=parameter,
            block=block,
        ) from error
    return secret.get()


def retry_if_retryable(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only failures a second attempt can fix: a dead kernel, not a notebook's error."""
    outcome = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    return isinstance(outcome, KernelDiedError)


def kernel_retries() -> int:
    """How often a dead kernel is retried (``$NBJOBS_KERNEL_RETRIES``, default 1)."""
    return settings().kernel_retries


@task(
    name="execute-notebook",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_if_retryable,
    retry_delay_seconds=KERNEL_RETRY_DELAY_SECONDS,
)
async def execute_notebook(
    staged: StagedNotebook,
    executor: Executor,
    cell_timeout_seconds: float | None = None,
    timeout_seconds: float | None = None,
) -> ExecutionOutcome | State[ExecutionOutcome]:
    """Execute a staged notebook through ``executor``; ``notebook.ipynb`` is written in any case.

    Publishes a progress artifact updated after every cell and logs one line per cell
    with its stdout and stderr, wherever the notebook runs. A dead kernel raises
    ``KernelDiedError`` (retried). A notebook that raised or timed out ends this task
    **Failed** (so its box in the run's graph says where the run failed), with the
    outcome as the state's data; every other outcome is returned.

    Example:
        >>> outcome = await execute_notebook(staged, LocalExecutor(), timeout_seconds=600)
        >>> outcome.report.status
        'completed'
    """
    logger = get_run_logger()
    progress = ProgressArtifact(
        artifact_key(staged.name, "progress"), f"{staged.name}: {executor.starting(staged)}"
    )

    def on_status(text: str) -> None:
        logger.info("%s", text)
        progress.show(progress.percent, f"{staged.name}: {text}")

    sinks = current_runtime().cell_sinks

    async def on_event(event: CellEvent) -> None:
        for sink in sinks:
            sink(event)
        if event.phase == "start":
            # one API call per cell would cost more than a fast cell takes: a cell after
            # the first is shown only if it runs a while (the artifact throttles)
            progress.show(
                100.0 * event.done / max(event.total, 1),
                f"{staged.name}: running cell {event.index} ({event.done + 1}/{event.total})",
                passing=event.done > 0,
            )
            return
        report = event.report
        if report is None:  # a running cell's prints so far
            _log_streams(logger, event)
            return
        # a failing cell is a WARNING line: the one ERROR line of a failed run is the
        # run's own, with the notebook's traceback (``run_ending.end_run``)
        logger.log(
            logging.INFO if report.status in ("ok", "skipped") else logging.WARNING,
            "cell %d (%d/%d) %s in %.3f s",
            event.index,
            event.done,
            event.total,
            report.status,
            report.duration_seconds or 0.0,
        )
        _log_streams(logger, event)

    outcome = await executor.execute(
        staged,
        cell_timeout_seconds=cell_timeout_seconds,
        timeout_seconds=timeout_seconds,
        on_event=on_event,
        on_status=on_status,
        log=logger,
    )
    report = outcome.report
    if report.status == "cancelled":
        logger.warning("cancelled: %s", report.error.message if report.error else "")
    try:
        await progress.close()
    except Exception as failure:  # progress reporting must never lose a run
        logger.warning("could not remove the progress artifact: %s", failure)
    if report.status == "kernel_died":
        error = report.error
        raise KernelDiedError(
            error.message if error else "the kernel died",
            cell_index=error.cell_index if error else None,
            execution=outcome.model_dump(mode="json"),
        )
    if report.status in ("failed", "timed_out") and report.error is not None:
        error = report.error
        where = f"cell {error.cell_index}: " if error.cell_index is not None else ""
        return Failed(message=f"{where}{error.name}: {error.message}"[:500], data=outcome)
    return outcome


_exporters = threading.local()


def _html_exporter() -> Any:
    """One HTMLExporter per thread: building one loads its templates (~0.2 s), and
    concurrent runs render in different threads."""
    exporter = getattr(_exporters, "html", None)
    if exporter is None:
        from nbconvert import HTMLExporter  # imported late: the import costs ~0.3 s

        exporter = _exporters.html = HTMLExporter()
        exporter.register_preprocessor(_without_scraps, enabled=True)
    return exporter


def _without_scraps(notebook: Any, resources: Any) -> tuple[Any, Any]:
    """The notebook to render, less scrapbook's glued scraps (an nbconvert preprocessor).

    A scrap's mimetype is for scrapbook to read back and has no HTML form: nbconvert
    rendered nothing for it and warned, in every worker's log. The warning was hidden
    with ``warnings.catch_warnings``, which is not thread-safe: two runs rendering at
    once restored each other's filters, and it came through.
    """
    for cell in notebook.cells:
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data is not None:
                for mimetype in [m for m in data if m.startswith(SCRAP_PREFIX)]:
                    del data[mimetype]
                if not data:
                    continue
            outputs.append(output)
        if "outputs" in cell:
            cell.outputs = outputs
    return notebook, resources


def warm_up_html() -> None:
    """Import nbconvert and load the HTML templates now (about 0.5 s), not in a first run."""
    _html_exporter()


def render_html(run_dir: Path) -> Path | None:
    """Render ``notebook.ipynb`` in ``run_dir`` to ``notebook.html`` with nbconvert."""

    source = run_dir / EXECUTED_NAME
    if not source.exists():
        return None
    body, _ = _html_exporter().from_filename(str(source))
    target = run_dir / HTML_NAME
    target.write_text(body, encoding="utf-8")
    return target
