"""The ``run-notebook`` flow: one notebook, one fresh kernel, artefacts always stored.

Its parameters are the public contract of a run, over HTTP as in Python::

    notebook, parameters, kernel, cells, cell_timeout_seconds, timeout_seconds, store
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import ValidationError

from blocks.exceptions import KernelDiedError, NotebookInputError
from blocks.store import HOME_ENV, open_store
from tasks.models import (
    ExecutionReport,
    NotebookRequest,
    NotebookResult,
    Timings,
    error_for_result,
)
from tasks.notebook import (
    artifact_key,
    execute_notebook,
    kernel_retries,
    render_notebook_html,
    stage_notebook,
)
from tasks.storage import publish_artifacts, run_prefix, upload_artefacts, write_result

FLOW_NAME = "run-notebook"
KEEP_RUN_DIRS_ENV = "NBJOBS_KEEP_RUN_DIRS"


def runs_root() -> Path:
    """Where run folders live until their artefacts are stored (``$NBJOBS_HOME/runs``)."""
    return Path(os.environ.get(HOME_ENV, "~/.nbjobs")).expanduser() / "runs"


@flow(name=FLOW_NAME, log_prints=True)
async def run_notebook(
    notebook: str | dict[str, Any],
    parameters: dict[str, Any] | None = None,
    kernel: str | None = None,
    cells: str | list[int | str] | None = None,
    cell_timeout_seconds: float | None = None,
    timeout_seconds: float | None = None,
    store: str | None = None,
) -> NotebookResult:
    """Run a notebook with parameters in a fresh kernel and store everything it produced.

    Args:
        notebook: A local path, an ``s3://`` URI, an ``http(s)://`` URL, or the
            notebook's JSON itself.
        parameters: Values injected into the cell tagged ``parameters`` (JSON values).
        kernel: Kernel name; defaults to the notebook's own kernelspec.
        cells: Cells to run: indices, inclusive ranges (``"2-5"``) and tags.
        cell_timeout_seconds: Limit for any one cell.
        timeout_seconds: Limit for the whole execution.
        store: Where artefacts go: ``s3://bucket/prefix``, a local folder, or a block
            name; by default ``$NBJOBS_STORE``, else ``$NBJOBS_HOME/artefacts``.

    Returns:
        The result; ``result.json`` in the store is the same document.

    Raises:
        NotebookInputError: The request was refused before any kernel started.
        NotebookRunError: The notebook raised, timed out or killed its kernel; raised
            after the artefacts are stored, with the result attached as ``.result``.

    Example:
        >>> result = await run_notebook("examples/report.ipynb", parameters={"n": 5})
        >>> result.outputs["total"]
        55
    """
    logger = get_run_logger()
    t_start = time.perf_counter()
    started_at = datetime.now(timezone.utc)
    try:
        request = NotebookRequest(
            notebook=notebook,
            parameters=parameters or {},
            kernel=kernel,
            cells=cells,
            cell_timeout_seconds=cell_timeout_seconds,
            timeout_seconds=timeout_seconds,
            store=store,
        )
    except ValidationError as error:
        raise NotebookInputError(f"invalid run request: {error}") from error
    run_id = flow_run.get_id() or str(uuid.uuid4())
    artefact_store = open_store(request.store)
    run_dir = runs_root() / run_id
    staged = stage_notebook(request, run_dir)
    stage_seconds = time.perf_counter() - t_start

    try:
        report = await execute_notebook.with_options(retries=kernel_retries())(
            staged, request.cell_timeout_seconds, request.timeout_seconds
        )
    except KernelDiedError as error:
        report = ExecutionReport.model_validate((error.result or {})["execution"])

    t_store = time.perf_counter()
    await render_notebook_html(run_dir)
    prefix = run_prefix(FLOW_NAME, run_id)
    artefacts = await upload_artefacts(
        artefact_store, run_dir, prefix, report.files, staged.workdir
    )
    result = NotebookResult(
        success=report.success,
        status=report.status,
        notebook=staged.name,
        flow_run_id=run_id,
        flow_name=FLOW_NAME,
        parameters=request.parameters,
        kernel=report.kernel,
        error=report.error,
        cells=report.cells,
        outputs=report.outputs,
        artefacts=artefacts,
        timings=Timings(
            started_at=started_at,
            finished_at=datetime.now(timezone.utc),
            total_seconds=round(time.perf_counter() - t_start, 4),
            stage_seconds=round(stage_seconds, 4),
            kernel_start_seconds=report.kernel_start_seconds,
            execute_seconds=report.execute_seconds,
            store_seconds=round(time.perf_counter() - t_store, 4),
        ),
        resources=report.resources,
        notes=report.notes,
    )
    await write_result(artefact_store, prefix, result)
    keys = {kind: artifact_key(staged.name, kind) for kind in _ARTIFACT_KINDS}
    await publish_artifacts(result, keys)
    if not os.environ.get(KEEP_RUN_DIRS_ENV):
        shutil.rmtree(run_dir, ignore_errors=True)

    if not result.success:
        failure = error_for_result(result)
        logger.error("%s: %s; partial notebook at %s", result.status, failure, artefacts.notebook)
        raise failure
    logger.info("completed %s; notebook at %s", staged.name, artefacts.notebook)
    return result


_ARTIFACT_KINDS = ("summary", "notebook", "html", "result", "outputs")

__all__ = ["FLOW_NAME", "run_notebook", "runs_root"]
