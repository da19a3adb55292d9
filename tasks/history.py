"""A notebook's runs as a series, read from Prefect: the ``<notebook>-history`` artifact
and ``nbjobs runs`` (the table itself: ``tasks.history_table``).

Every ``run-notebook`` run is tagged ``notebook:<label>`` and publishes its glued
values as the ``<notebook>-outputs`` table artifact; Prefect keeps both as long as the
runs. So the history is read, not kept: the notebook's last finished flow runs (one
call), the outputs artifacts of those runs (one call) and the names of their
deployments (one call). No second store of runs can disagree with the UI's.

After every run (any door, a cache hit too) the run republishes ``<notebook>-history``:
the last ``HISTORY_RUNS`` runs as ``history_markdown`` draws them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import ArtifactCollectionSort, ArtifactSort, FlowRunSort

from notebook_jobs.tasks.chart import SUCCEEDED
from notebook_jobs.tasks.history_table import (
    HISTORY_RUNS,
    HistoryRun,
    history_markdown,
    merged,
    without_defaults,
)
from notebook_jobs.tasks.names import NOTEBOOK_LABEL_TAG, RUN_FLOW
from notebook_jobs.tasks.notebook import artifact_key
from notebook_jobs.tasks.ui_links import artifact_url

NOTEBOOK_TAG = NOTEBOOK_LABEL_TAG
FINISHED = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
HISTORY_KIND = "history"


def _output_value(text: str) -> Any:
    """A value of the outputs table back as what was glued: its JSON, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _trigger(tags: list[str]) -> str:
    for tag in tags:
        if tag.startswith("trigger:"):
            return tag.removeprefix("trigger:")
    return "schedule" if "auto-scheduled" in tags else "api"


def _status(state: Any) -> str:
    if state is None:
        return "unknown"
    if state.name == "Cached":
        return "cached"
    return str(state.type.value).lower()


async def read_history(label: str, runs: int = HISTORY_RUNS) -> list[HistoryRun]:
    """The notebook's last ``runs`` finished runs, newest first, with their changes."""
    async with get_client() as client:
        flow_runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RUN_FLOW])),
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"{NOTEBOOK_TAG}{label}"]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINISHED)),
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=runs,
        )
        if not flow_runs:
            return []
        ids = [flow_run.id for flow_run in flow_runs]
        deployment_ids = list({r.deployment_id for r in flow_runs if r.deployment_id})
        artifacts, deployments = await asyncio.gather(
            client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[artifact_key(label, "outputs")]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=ids),
                ),
                sort=ArtifactSort.CREATED_DESC,
            ),
            client.read_deployments(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids))
            )
            if deployment_ids
            else asyncio.sleep(0, []),
        )
    outputs: dict[str, dict[str, Any]] = {}
    for artifact in artifacts:
        run_id = str(artifact.flow_run_id)
        rows = artifact.data
        if isinstance(rows, str):  # a table artifact's data is stored as JSON text
            try:
                rows = json.loads(rows)
            except ValueError:
                continue
        if run_id in outputs or not isinstance(rows, list):
            continue  # the newest version per run
        outputs[run_id] = {
            str(row.get("name")): _output_value(str(row.get("value")))
            for row in rows
            if isinstance(row, dict)
        }
    names = {str(d.id): d.name for d in deployments}
    zones = {str(d.id): _schedule_zone(d) for d in deployments}
    found = []
    for flow_run in flow_runs:
        state = flow_run.state
        status = _status(state)
        set_values = (flow_run.parameters or {}).get("parameters")
        found.append(
            HistoryRun(
                id=str(flow_run.id),
                name=flow_run.name,
                started=flow_run.start_time or flow_run.expected_start_time,
                status=status,
                trigger=_trigger(list(flow_run.tags or [])),
                deployment=names.get(str(flow_run.deployment_id)),
                parameters=set_values if isinstance(set_values, dict) else {},
                seconds=_seconds(flow_run),
                outputs=outputs.get(str(flow_run.id), {}),
                error=_failure(state) if status not in SUCCEEDED else None,
                scheduled=flow_run.expected_start_time,
                zone=zones.get(str(flow_run.deployment_id)),
            )
        )
    return found


# Prefect's words before the error of a flow that raised (a run refused before any kernel)
ENGINE_PREFIX = "Flow run encountered an exception: "


def _failure(state: Any) -> str | None:
    """What a run that did not succeed says about it: its state's message, without the
    engine's preamble (``UnknownKernelError: kernel 'julia-9' is not installed...``)."""
    if state is None or not state.message:
        return None
    return str(state.message).removeprefix(ENGINE_PREFIX) or None


def _schedule_zone(deployment: Any) -> str | None:
    for item in deployment.schedules or []:
        zone = getattr(item.schedule, "timezone", None)
        if zone:
            return str(zone)
    return None


def _seconds(flow_run: Any) -> float | None:
    if flow_run.start_time and flow_run.end_time:
        return round(float((flow_run.end_time - flow_run.start_time).total_seconds()), 2)
    return None


def history_key(label: str) -> str:
    """The artifact key of a notebook's history: ``report-history``."""
    return artifact_key(label, HISTORY_KIND)


def history_link(label: str) -> str | None:
    """The history's page in the default UI (every version of the artifact)."""
    return artifact_url(history_key(label))


async def publish_history(
    label: str, current: HistoryRun | None, defaults: dict[str, Any] | None = None
) -> list[HistoryRun]:
    """Read the notebook's history and publish it as ``<notebook>-history`` (from a flow
    run); parameters equal to ``defaults`` (the notebook's) are left out."""
    from prefect.artifacts import acreate_markdown_artifact

    runs = without_defaults(merged(current, await read_history(label)), defaults)
    await acreate_markdown_artifact(
        history_markdown(label, runs),
        key=history_key(label),
        description=f"{label}: its last {len(runs)} runs, newest first",
    )
    return runs


async def last_runs() -> list[dict[str, Any]]:
    """Every notebook with a history, with its last run: ``nbjobs runs`` alone."""
    async with get_client() as client:
        collections = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(like_=f"%-{HISTORY_KIND}")
            ),
            sort=ArtifactCollectionSort.UPDATED_DESC,
        )
        ids = [c.flow_run_id for c in collections if c.flow_run_id]
        flow_runs = (
            await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            if ids
            else []
        )
    by_id = {str(r.id): r for r in flow_runs}
    found = []
    for collection in collections:
        flow_run = by_id.get(str(collection.flow_run_id))
        tags = list(flow_run.tags or []) if flow_run else []
        label = next((t.removeprefix(NOTEBOOK_TAG) for t in tags if t.startswith(NOTEBOOK_TAG)), "")
        if flow_run is None or not label:
            continue  # an artifact of that name that no notebook run published
        started = (flow_run.start_time or flow_run.expected_start_time) if flow_run else None
        found.append(
            {
                "notebook": label,
                "last_run": str(collection.flow_run_id) if collection.flow_run_id else None,
                "name": flow_run.name if flow_run else None,
                "started": started.isoformat() if started else None,
                "status": _status(flow_run.state) if flow_run else None,
                "history": history_link(label),
            }
        )
    return found
