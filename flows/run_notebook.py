"""The ``run-notebook`` flow: one notebook, one fresh kernel, artefacts always stored.

Its parameters are the public contract of a run, over HTTP as in Python::

    notebook, parameters, kernel, cells, cell_timeout_seconds, timeout_seconds, store
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from prefect import Task, flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.exceptions import MissingResult
from prefect.runtime import flow_run
from pydantic import ValidationError

from notebook_jobs.blocks.exceptions import (
    ArtefactStoreError,
    FixedParameterError,
    KernelDiedError,
    NotebookInputError,
    SlurmSubmissionError,
    WorkingFolderError,
)
from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.blocks.sizes import parse_size
from notebook_jobs.blocks.slurm import load_cluster
from notebook_jobs.blocks.store import open_store
from notebook_jobs.flows.deployment_rules import (
    RunOrigin,
    merged_parameters,
    refused_parameter,
    run_deployment,
)
from notebook_jobs.flows.repair import repair_arguments
from notebook_jobs.flows.run_ending import (
    announce,
    announce_refusal,
    cached_run,
    end_run,
    staged_defaults,
    store_run,
)
from notebook_jobs.flows.run_labels import (
    notebook_label,
    run_name,
    run_trigger,
    start_labelling,
)
from notebook_jobs.flows.series import (
    expected_start,
    run_context,
    schedule_zone,
    skip_reason,
    skipped,
)
from notebook_jobs.tasks.cache import find_cached, key_of, remember_run
from notebook_jobs.tasks.engine.layout import (
    RESULT_NAME,
    run_key,
    run_prefix,
    runs_root,
)
from notebook_jobs.tasks.engine.parameters import in_order
from notebook_jobs.tasks.engine.run_context import duration_seconds, tick_text
from notebook_jobs.tasks.events import read_alerts_ahead
from notebook_jobs.tasks.executors import Executor, process_executor
from notebook_jobs.tasks.models import (
    CacheInfo,
    ExecutionOutcome,
    NotebookRequest,
    NotebookResult,
    RunContext,
    Timings,
)
from notebook_jobs.tasks.names import RUN_FLOW
from notebook_jobs.tasks.notebook import (
    execute_notebook,
    kernel_retries,
    stage_notebook,
)
from notebook_jobs.tasks.runtime import current_executor
from notebook_jobs.tasks.slurm_executor import SlurmExecutor

FLOW_NAME = RUN_FLOW


@functools.cache
def execute_task(retries: int) -> Task[..., Any]:
    """``execute_notebook`` with this many retries of a dead kernel.

    Made once per value: building a task (``with_options``) hashes its source, a few
    milliseconds of CPU that a batch of runs would pay per run.
    """
    return execute_notebook.with_options(retries=retries)


@flow(name=FLOW_NAME, flow_run_name=run_name, log_prints=True)
async def run_notebook(
    notebook: str | dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    kernel: str | None = None,
    cells: str | list[int | str] | None = None,
    cell_timeout_seconds: float | None = None,
    timeout_seconds: float | None = None,
    store: str | None = None,
    cluster: str | None = None,
    input_files: list[str] | None = None,
    cwd: str | None = None,
    language: str | None = None,
    report_mode: bool = False,
    start_timeout_seconds: float | None = None,
    memory_limit: str | None = None,
    strict_parameters: bool = False,
    name: str | None = None,
    cache: bool = False,
    cache_expiration_seconds: float | None = None,
    refresh_cache: bool = False,
    cache_fingerprint: str | None = None,
    parameter_order: list[str] | None = None,
    repair_of: str | None = None,
    from_cell: int | None = None,
    keep_failed_kernel: str | None = None,
) -> NotebookResult:
    """Run a notebook with parameters in a fresh kernel and store everything it produced.

    Args:
        notebook: A local path, an ``s3://`` URI, an ``http(s)://`` URL, or the
            notebook's JSON itself; with ``repair_of``, a fixed notebook (default: the
            one the failed run ran).
        parameters: Values injected into the cell tagged ``parameters`` (JSON values).
        kernel: Kernel name; defaults to the notebook's own kernelspec.
        cells: Cells to run: indices, inclusive ranges (``"2-5"``) and tags.
        cell_timeout_seconds: Limit for any one cell.
        timeout_seconds: Limit for the whole execution.
        store: Where artefacts go: ``s3://bucket/prefix``, a local folder, or a block
            name; by default ``$NBJOBS_STORE``, else ``$NBJOBS_HOME/artefacts``.
        cluster: A ``SlurmCluster`` block name: the execute step runs as a Slurm job.
        input_files: Files copied into the notebook's working folder first (paths,
            ``s3://`` or ``http(s)://`` URLs).
        cwd: The kernel's working folder on the machine that runs it, as papermill's
            ``--cwd``; files written there during the run are stored as well. By
            default the run has a fresh folder of its own.
        language: The language parameters are written in (default: the notebook's).
        report_mode: Hide every code cell's source, as papermill's ``--report-mode``.
        start_timeout_seconds: Limit for the kernel to start (default 60 s).
        memory_limit: Resident memory the kernel and its children may use, as
            ``2GiB`` or ``300MiB``: the cell that reaches it is interrupted and the run
            fails with ``MemoryLimitError``, its partial notebook stored. On Slurm the
            cluster block's ``memory_limit`` (or ``--mem``) is the default.
        strict_parameters: Refuse names the notebook does not declare (by default
            they are injected with a warning in the result's notes, as papermill does).
        name: What to call the notebook in run names, tags, artifacts and the result;
            default: its file name, or for a notebook sent inline its metadata's
            ``name`` or ``title``, else ``notebook``.
        cache: Reuse a completed run with the same cache key instead of running:
            nothing executes, the result is that run's with ``cached_from`` set.
        cache_expiration_seconds: How long a completed run may be reused (default:
            as long as its key holds).
        refresh_cache: Run even when a cached run matches, and cache this one.
        cache_fingerprint: The environment in the key; default: the hash of the lock
            file beside the notebook, else of the installed packages.
        parameter_order: The order in which ``parameters`` are injected, by name. A
            JSON object keeps no order once a server on PostgreSQL has stored it
            (JSONB), so ``nbjobs run`` sends its command line's, as papermill injects
            them. Default: as received.
        repair_of: A failed run's flow run id: this run repairs it, going on from its
            failing cell with its notebook, parameters and options (those given here
            win); the cells before are run again first (``flows/repair.py``).
        from_cell: With ``repair_of``: the cell to go on from (default: the failed one).
        keep_failed_kernel: How long this run's kernel, if the run fails in a cell, waits
            alive in the worker for ``nbjobs repair`` to go on in it (``10m``, ``0`` not
            at all); default: the worker's (``nbjobs serve --keep-failed-kernel``, off
            unless given). ``nbjobs run`` on the local server sends ``10m``.

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
    # every argument but the notebook's own parameters, checked against the deployment
    given = {
        name: value
        for name, value in locals().items()
        if name not in ("parameters", "parameter_order")  # the caller's, always
    }
    logger = get_run_logger()
    t_start = time.perf_counter()
    started_at = datetime.now(timezone.utc)
    deployment = await run_deployment()
    if deployment is not None:
        refused = refused_parameter(
            deployment.parameters or {}, deployment.tags or [], given, FLOW_DEFAULTS
        )
        if refused is not None:
            raise FixedParameterError(refused, deployment.name)
    arguments = {**given, "parameters": merged_parameters(deployment, parameters)}
    if repair_of is not None:  # the failed run's arguments, with this run's on top
        arguments, arguments["parameters"], arguments["from_cell"] = await repair_arguments(
            repair_of, from_cell, given, parameters or {}, FLOW_DEFAULTS
        )
        arguments["repair_of"] = repair_of
    request = run_request(arguments, parameter_order)
    run_id = flow_run.get_id() or str(uuid.uuid4())
    zone = schedule_zone(deployment)
    # tags and the alerts are API calls: made while the notebook runs, not before or after
    labelling = (
        start_labelling(
            run_id,
            request.notebook,
            request.name,
            tick_text(expected_start().astimezone(zone)),
            repair_of,
        )
        if flow_run.get_id()
        else None
    )
    if flow_run.get_id():
        read_alerts_ahead()
    origin = RunOrigin.of(deployment, parameters, FLOW_DEFAULTS)
    try:
        reason = await skip_reason(deployment, zone) if deployment is not None else None
        if reason is not None:  # its overlap or catch-up policy says: not this tick
            label = notebook_label(request.notebook, request.name)
            return await skipped(reason, label, run_id, zone)  # type: ignore[return-value]
        context = run_context(deployment, await run_trigger(), zone)
        return await _run(request, run_id, t_start, started_at, origin, context)
    except (NotebookInputError, ArtefactStoreError, SlurmSubmissionError) as error:
        # ended before it had a result (else it was announced): alerts on failures see it
        await announce_refusal(
            error, notebook_label(request.notebook, request.name), run_id, origin
        )
        raise
    finally:
        if labelling is not None:
            try:
                await labelling
            except Exception as error:  # a missing tag must not fail a run
                logger.warning("could not tag the flow run: %s", error)


def flow_arguments(request: NotebookRequest) -> dict[str, Any]:
    """The flow's arguments for a request (``run_request``'s inverse): a batch's items."""
    arguments = request.model_dump()
    limit = arguments.pop("memory_limit_bytes")
    arguments["memory_limit"] = f"{limit}B" if limit else None
    keep = arguments.pop("keep_failed_kernel_seconds")
    arguments["keep_failed_kernel"] = None if keep is None else f"{keep:g}s" if keep else "0"
    return arguments


def run_request(arguments: dict[str, Any], order: list[str] | None) -> NotebookRequest:
    """The checked request from the flow's arguments (a repair's: the failed run's too).

    Raises:
        NotebookInputError: An argument the run cannot take, said in one line.
    """
    if arguments.get("notebook") is None:
        raise NotebookInputError("notebook: required (unless repair_of names a failed run)")
    fields = {k: v for k, v in arguments.items() if k in NotebookRequest.model_fields}
    memory_limit = arguments.get("memory_limit")
    try:
        fields["memory_limit_bytes"] = parse_size(memory_limit) if memory_limit else None
    except ValueError as error:
        raise NotebookInputError(f"memory_limit: {error}") from error
    keep = arguments.get("keep_failed_kernel")
    try:
        fields["keep_failed_kernel_seconds"] = (
            None if keep is None else 0.0 if str(keep) == "0" else duration_seconds(str(keep))
        )
    except ValueError as error:
        raise NotebookInputError(f"keep_failed_kernel: {error}") from error
    fields["parameters"] = in_order(arguments.get("parameters") or {}, order)
    fields["input_files"] = fields.get("input_files") or []
    try:
        return NotebookRequest(**fields)
    except ValidationError as error:
        raise NotebookInputError(f"invalid run request: {error}") from error


# what a deployment that does not set a parameter fixes it to
FLOW_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(run_notebook.fn).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


async def _run(
    request: NotebookRequest,
    run_id: str,
    t_start: float,
    started_at: datetime,
    origin: RunOrigin,
    context: RunContext,
) -> NotebookResult:
    """The run itself: stage, execute (through an executor), store, publish, end."""
    artefact_store = await asyncio.to_thread(open_store, request.store)
    slurm_cluster = await load_cluster(request.cluster) if request.cluster else None
    if slurm_cluster is not None and request.cwd is not None:
        raise WorkingFolderError(
            f"cwd {request.cwd!r} is not available for Slurm runs: the job runs in its own "
            "folder on the cluster's shared filesystem; send the files it reads as input_files",
            path=request.cwd,
        )
    executor: Executor
    if slurm_cluster is not None:
        executor = SlurmExecutor(slurm_cluster)
    else:
        # the worker's, the batch's or the command's; else this process's own
        executor = current_executor() or process_executor()
    key = run_key(run_id, max(flow_run.get_run_count(), 1))
    prefix = run_prefix(FLOW_NAME, key)
    staged = await stage_notebook(
        request,
        executor.run_folder(key),
        check_kernel=executor.checks_kernel_here,
        context=context.model_dump(mode="json"),
    )
    staged.run_id = run_id  # a kernel kept for this run's repair is kept under it
    stage_seconds = time.perf_counter() - t_start
    caching: CacheInfo | None = None
    if request.cache:
        caching = await asyncio.to_thread(key_of, request, staged)
        cached = None
        if not request.refresh_cache:
            try:
                cached = await find_cached(
                    artefact_store, caching, request.cache_expiration_seconds
                )
            except Exception as error:  # an unreadable record is a miss, not a failure
                get_run_logger().warning("could not read the cache, running: %s", error)
        if cached is not None:  # nothing executes
            return await cached_run(
                request, artefact_store, run_id, prefix, staged, cached, t_start, started_at, origin
            )
    # the task ends Failed when the notebook failed; its outcome is the state's data
    state = await execute_task(kernel_retries())(
        staged,
        executor,
        request.cell_timeout_seconds,
        request.timeout_seconds,
        return_state=True,
    )
    ended = await state.aresult(raise_on_failure=False)
    if isinstance(ended, KernelDiedError):  # retried as often as allowed: store what ran
        outcome = ExecutionOutcome.model_validate(ended.execution)
    elif isinstance(ended, BaseException):
        raise ended
    else:
        outcome = ended
    # A cancelled run is stored as any other (shielded: a second cancellation must not
    # lose it) and then ends Cancelled.
    timings = Timings(
        started_at=started_at,
        finished_at=started_at,  # set when stored
        total_seconds=0.0,
        stage_seconds=round(stage_seconds, 4),
        kernel_start_seconds=outcome.report.kernel_start_seconds,
        execute_seconds=outcome.report.execute_seconds,
    )
    storing = asyncio.ensure_future(
        store_run(
            request,
            artefact_store,
            run_id,
            prefix,
            staged,
            outcome,
            t_start,
            timings,
            origin,
            caching,
        )
    )
    if outcome.report.status == "cancelled":
        result = await asyncio.shield(storing)
    else:
        result = await storing
    if caching is not None and result.success:  # a failed run is never reused
        try:
            await remember_run(artefact_store, caching, result, prefix)
        except Exception as error:  # the run itself is stored: say so, do not fail it
            get_run_logger().warning("could not record the run in the cache: %s", error)
    await announce(result, staged.name, staged_defaults(staged))
    return end_run(result, staged.name)


async def run_outcome(state: State[Any], store: str | None) -> Any:
    """What a finished ``run-notebook`` run gave: its result, or the exception it raised.

    Prefect now and then hands back the final Completed state as read from its API,
    without the value the flow returned (``MissingResult``; seen on the SQLite server
    when a state proposal is retried after "database is locked"); ``result.json`` in
    the store is the same document.
    """
    try:
        return await state.aresult(raise_on_failure=False)
    except MissingResult:
        key = safe_key(run_prefix(FLOW_NAME, str(state.state_details.flow_run_id)), RESULT_NAME)
        data = await asyncio.to_thread(open_store(store).get_bytes, key)
        return NotebookResult.model_validate_json(data)


__all__ = ["FLOW_NAME", "run_notebook", "run_outcome", "runs_root"]
