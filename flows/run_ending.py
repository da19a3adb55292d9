"""How a ``run-notebook`` run ends: stored, published, announced, and its final state.

``store_run`` stores what an executed run left (always, also on failure) and publishes
its artifacts; ``cached_run`` does the same for a cache hit, from the cached run's
result; ``announce`` emits the run's event with the alerts that hold; ``end_run``
gives the final state: Completed, Cancelled, or Failed (raised).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed

from notebook_jobs.blocks.exceptions import ArtefactStoreError
from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.blocks.settings import settings
from notebook_jobs.blocks.store import ArtefactStore
from notebook_jobs.flows.deployment_rules import RunOrigin
from notebook_jobs.flows.repair import link_failed_run
from notebook_jobs.flows.run_labels import (
    failure_tag,
    notebook_label,
    run_trigger,
    show_parameters,
    tag_failure,
)
from notebook_jobs.tasks.cache import expiry, relinked
from notebook_jobs.tasks.engine.layout import EXECUTED_NAME, RESULT_NAME
from notebook_jobs.tasks.engine.staged import StagedNotebook
from notebook_jobs.tasks.engine.staging import notebook_defaults
from notebook_jobs.tasks.events import emit_refusal_event, emit_run_event
from notebook_jobs.tasks.history import publish_history
from notebook_jobs.tasks.history_table import HistoryRun
from notebook_jobs.tasks.models import (
    CacheInfo,
    ExecutionOutcome,
    NotebookRequest,
    NotebookResult,
    Repaired,
    Resources,
    RunContext,
    Timings,
    error_for_result,
)
from notebook_jobs.tasks.notebook import artifact_key
from notebook_jobs.tasks.publish import publish_result
from notebook_jobs.tasks.store.artefacts import (
    RunFolder,
    copy_files,
    mask_files,
    remove_run_folder,
    result_document,
    store_artefacts,
    store_result,
)
from notebook_jobs.tasks.store.spill import spill_run

ARTIFACT_KINDS = ("summary", "outputs")


def store_retries() -> int:
    """Retries of a failed upload before spilling (``$NBJOBS_STORE_RETRIES``, default 2)."""
    return settings().store_retries


@functools.cache
def store_task(retries: int) -> Task[..., Any]:
    """``store_artefacts`` with this many retries of a failed upload (made once per value)."""
    return store_artefacts.with_options(retries=retries)


async def announce(
    result: NotebookResult, name: str, defaults: dict[str, Any] | None = None
) -> None:
    """Emit the run's ``nbjobs.notebook.*`` event, logging the alerts that hold, and
    republish the notebook's history with this run in it (both at once).

    Args:
        defaults: The notebook's own parameter defaults: the history leaves out values
            equal to them.
    """
    label = notebook_label(name)
    failed = not result.success and result.status != "cancelled"
    error = result.error
    await asyncio.gather(
        _emitting(emit_run_event(result, label, flow_run.get_name())),
        _publishing_history(label, await _history_row(result), defaults),
        _tagging(failure_tag(error.cell_index, error.name) if failed and error else None),
    )


async def announce_refusal(
    error: BaseException, label: str, run_id: str, origin: RunOrigin
) -> None:
    """Emit ``nbjobs.notebook.failed`` for a run that ended before it had a result, and
    show it in the history; a run whose store failed (its result kept in the spill
    folder) is announced in full."""
    kept = getattr(error, "result", None)
    if isinstance(kept, dict):
        await announce(NotebookResult.model_validate(kept), label)
        return
    row = HistoryRun(
        id=run_id,
        name=flow_run.get_name() or run_id,
        started=datetime.now(timezone.utc),
        status="failed",
        trigger=await run_trigger(),
        deployment=origin.deployment_name,
        parameters={},  # a refused value may be one that must not be shown (a secret)
        error=f"{type(error).__name__}: {error}",
    )
    await asyncio.gather(
        _emitting(emit_refusal_event(error, label, run_id, flow_run.get_name())),
        _publishing_history(label, row),
        _tagging(failure_tag(None, type(error).__name__)),
    )


async def _emitting(emitting: Awaitable[list[str]]) -> None:
    logger = get_run_logger()
    try:
        held = await emitting
    except Exception as error:  # an alert must never fail the run it reports on
        logger.warning("could not emit the run's event or read its alerts: %s", error)
        return
    for line in held:
        logger.warning("alert: %s", line)


async def _tagging(tag: str | None) -> None:
    run_id = flow_run.get_id()
    if tag is None or not run_id:
        return
    try:
        await tag_failure(run_id, tag)
    except Exception as error:  # a tag is not worth a failed run
        get_run_logger().warning("could not tag the run with its failure: %s", error)


async def publish_row(label: str, row: HistoryRun) -> None:
    """Republish the notebook's history with ``row`` in it (a run that did not run)."""
    await _publishing_history(label, row)


async def _publishing_history(
    label: str, row: HistoryRun, defaults: dict[str, Any] | None = None
) -> None:
    if not flow_run.get_id():
        return  # no server to read the history from, nor to show it
    try:
        await publish_history(label, row, defaults)
    except Exception as error:  # the history is not worth a failed run
        get_run_logger().warning("could not publish the notebook's history: %s", error)


async def _history_row(result: NotebookResult) -> HistoryRun:
    """This run as its notebook's history shows it (its state is not final yet)."""
    context = result.context
    if result.cached_from:
        status = "cached"
    elif result.success:
        status = "completed"
    else:
        status = "cancelled" if result.status == "cancelled" else "failed"
    return HistoryRun(
        id=str(result.flow_run_id),
        name=flow_run.get_name() or str(result.flow_run_id),
        started=result.timings.started_at,
        status=status,
        trigger=await run_trigger(),
        deployment=result.deployment,
        parameters=result.parameters,
        seconds=result.timings.total_seconds,
        outputs=result.outputs,
        error=None if result.success else str(error_for_result(result)),
        scheduled=datetime.fromisoformat(context.scheduled_time) if context else None,
        zone=context.timezone if context else None,
    )


async def cached_run(
    request: NotebookRequest,
    artefact_store: ArtefactStore,
    run_id: str,
    prefix: str,
    staged: StagedNotebook,
    cached: NotebookResult,
    t_start: float,
    started_at: datetime,
    origin: RunOrigin,
) -> NotebookResult:
    """A cache hit: the cached run's result and artefacts, as this run's; nothing ran."""
    logger = get_run_logger()
    info = cached.cache
    assert info is not None
    note = (
        f"cached: the result of run {cached.flow_run_id} (cache key {info.key[:16]}), "
        "nothing was executed; refresh_cache (--refresh) runs it again"
    )
    logger.info("%s", note)
    fresh = await asyncio.to_thread(relinked, cached, artefact_store)  # S3: presigning
    result = fresh.model_copy(
        update={
            "flow_run_id": run_id,
            "cached_from": cached.flow_run_id,
            "parameters": request.parameters,
            "parameters_used": staged.parameters_used(),
            "parameters_from": _sources(staged, origin),
            "deployment": origin.deployment_name,
            "context": RunContext.model_validate(staged.context) if staged.context else None,
            "timings": Timings(
                started_at=started_at,
                finished_at=datetime.now(timezone.utc),
                total_seconds=round(time.perf_counter() - t_start, 4),
                stage_seconds=round(time.perf_counter() - t_start, 4),
            ),
            "resources": Resources(),
            "slurm": None,
            "notes": [],  # cached_from and cache say it
        }
    )
    # the cached run's notebook, HTML and files; this run's own result.json (cached_from)
    own = safe_key(prefix, RESULT_NAME)
    result.artefacts.result = artefact_store.uri(own)
    result.artefacts.links["result"] = await asyncio.to_thread(artefact_store.link, own)
    keys = {kind: artifact_key(staged.name, kind) for kind in ARTIFACT_KINDS}
    stored = await store_result(result, artefact_store, prefix)
    await publish_result(result, keys, None if stored else artefact_store, prefix)
    if flow_run.get_id():
        try:
            await show_parameters(
                run_id, result.parameters, cached.artefacts.input, origin.flow_defaults
            )
        except Exception as error:
            logger.warning("could not show the parameters used on the flow run: %s", error)
    await asyncio.to_thread(remove_run_folder, staged.run_dir, [])
    await announce(result, staged.name, staged_defaults(staged))
    return Completed(name="Cached", message=note, data=result)  # type: ignore[return-value]


async def store_run(
    request: NotebookRequest,
    artefact_store: ArtefactStore,
    run_id: str,
    prefix: str,
    staged: StagedNotebook,
    outcome: ExecutionOutcome,
    t_start: float,
    timings: Timings,
    origin: RunOrigin,
    caching: CacheInfo | None = None,
) -> NotebookResult:
    """Store the run's artefacts and result, and publish its artifacts."""
    logger = get_run_logger()
    report, run_dir = outcome.report, staged.run_dir
    t_store = time.perf_counter()
    if staged.cwd is not None:  # the files the run wrote in the user's folder, kept as they are
        await asyncio.to_thread(copy_files, staged.cwd, report.files, staged.files_dir)
    if staged.secrets is not None:  # the stored copies of what the notebook wrote
        await asyncio.to_thread(mask_files, staged.secrets, staged.files_dir, report.files)
    folder = RunFolder(
        path=run_dir,
        prefix=prefix,
        files=tuple(report.files),
        workdir_name=staged.files_dir.relative_to(run_dir).as_posix(),
        logs={name: Path(path) for name, path in outcome.logs.items()},
    )
    spilled: Path | None = None
    notes = staged.notes + list(report.notes)
    try:
        artefacts = await store_task(store_retries())(artefact_store, folder)
    except ArtefactStoreError as error:
        # Nothing is lost: keep everything here and say where, for nbjobs retry-uploads.
        spilled, artefacts = await asyncio.to_thread(
            spill_run, folder, store_spec=artefact_store.spec, reason=str(error)
        )
        notes.append(
            f"the artefact store {artefact_store.root} could not be reached ({error}); the "
            f"artefacts are kept in the spill folder {spilled}; run `nbjobs retry-uploads`"
        )
        logger.error("%s", notes[-1])
    if caching is not None and report.success:  # from when the run ended, not began
        caching.expires_at = expiry(request.cache_expiration_seconds)
    result = NotebookResult(
        success=report.success,
        status=report.status,
        notebook=staged.name,
        flow_run_id=run_id,
        parameters=request.parameters,
        parameters_used=staged.parameters_used(),
        parameters_from=_sources(staged, origin),
        deployment=origin.deployment_name,
        context=staged.context,
        kernel=report.kernel,
        error=report.error,
        cells=report.cells,
        outputs=report.outputs,
        artefacts=artefacts,
        timings=timings.model_copy(
            update={
                "finished_at": datetime.now(timezone.utc),
                "total_seconds": round(time.perf_counter() - t_start, 4),
                "store_seconds": round(time.perf_counter() - t_store, 4),
            }
        ),
        resources=report.resources,
        slurm=outcome.slurm,
        notes=notes,
        cache=caching if report.success else None,
        repaired_from=(
            Repaired(
                flow_run_id=request.repair_of,
                from_cell=request.from_cell or 0,
                mode=report.repair_mode or "cold",
            )
            if request.repair_of
            else None
        ),
    )
    keys = {kind: artifact_key(staged.name, kind) for kind in ARTIFACT_KINDS}
    # the Parameters tab's update goes beside the artifacts, not after them
    showing = (
        asyncio.ensure_future(
            show_parameters(run_id, result.parameters, artefacts.input, origin.flow_defaults)
        )
        if flow_run.get_id()
        else None
    )
    if spilled is None:
        # result.json first: `nbjobs run` reports it while the artifacts are published
        stored = await store_result(result, artefact_store, prefix)
        await publish_result(
            result, keys, None if stored else artefact_store, prefix, run_dir / EXECUTED_NAME
        )
    else:
        await asyncio.to_thread((spilled / RESULT_NAME).write_bytes, result_document(result))
        await publish_result(result, keys, executed=spilled / EXECUTED_NAME)
    if showing is not None:
        try:
            await showing
        except Exception as error:  # the Parameters tab is not worth a failed run
            logger.warning("could not show the parameters used on the flow run: %s", error)
    if request.repair_of and flow_run.get_id():
        try:  # the failed run's page links its repair
            await link_failed_run(request.repair_of, run_id, staged.name, result.status)
        except Exception as error:  # a link is not worth a failed repair
            logger.warning("could not link run %s to its repair: %s", request.repair_of, error)
    if spilled is not None:
        raise ArtefactStoreError(
            notes[-1], store=artefact_store.spec, result=result.model_dump(mode="json")
        )
    if not settings().keep_run_dirs and not staged.kernel_kept:  # (a kept kernel's: with it)
        await asyncio.to_thread(remove_run_folder, run_dir, list(folder.logs.values()))
    return result


def _sources(staged: StagedNotebook, origin: RunOrigin) -> dict[str, Any]:
    found = dict(origin.sources(staged.parameters_used(), staged_defaults(staged)))
    return {**found, **dict.fromkeys(staged.from_context, "context")}


def staged_defaults(staged: StagedNotebook) -> dict[str, Any]:
    """The notebook's own parameter defaults (those written as literals)."""
    return notebook_defaults(staged.notebook, staged.kernel)


def end_run(result: NotebookResult, name: str) -> NotebookResult:
    """End the flow run as the notebook ended: Completed, Cancelled, or Failed.

    A failed run ends in a Failed state whose message is the failure itself (``cell 3:
    ValueError: bad value``, shown in the run page's header), with the typed error as its
    data (calling the flow raises it), and logs one ERROR line with the notebook's
    traceback. A flow with retries left raises instead, for Prefect to retry it.
    """
    logger = get_run_logger()
    if result.status == "cancelled":
        message = result.error.message if result.error else "cancelled"
        logger.warning("cancelled: %s; the partial notebook is stored with the run", message)
        return Cancelled(message=message, data=result)  # type: ignore[return-value]
    if not result.success:
        failure = error_for_result(result)
        traceback = result.error.traceback if result.error else ""
        logger.error(
            "%s%s\nthe partial notebook is stored with the run (its summary links it)",
            failure,
            f"\n{traceback}" if traceback else "",
        )
        if _retries_left():
            raise failure
        return Failed(message=str(failure)[:FAILED_MESSAGE_CHARS], data=failure)  # type: ignore[return-value]
    logger.info("completed %s", name)
    return result


FAILED_MESSAGE_CHARS = 500  # the header of the run page shows a line, not a page


def _retries_left() -> bool:
    """Whether Prefect will run this flow run again if it fails now."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return False
    policy = context.flow_run.empirical_policy
    retries = max(getattr(context.flow, "retries", None) or 0, policy.retries or 0)
    return flow_run.get_run_count() <= retries
