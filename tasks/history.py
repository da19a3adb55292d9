"""A notebook's runs as a series: the ``<notebook>-history`` artifact and ``nbjobs runs``.

Every ``run-notebook`` run is tagged ``notebook:<label>`` and publishes its glued
values as the ``<notebook>-outputs`` table artifact; Prefect keeps both as long as the
runs. So the history is read, not kept: the notebook's last finished flow runs (one
call), the outputs artifacts of those runs (one call) and the names of their
deployments (one call). No second store of runs can disagree with the UI's.

After every run (any door, a cache hit too) the run republishes ``<notebook>-history``:
a trend chart per numeric output (an SVG image inline, failures in red) above a table of
the last ``HISTORY_RUNS`` runs, newest first: when, how it was started and by what,
status, seconds, each glued scalar value with its change from the run before, the
parameters that differ from the notebook's defaults, and a link to the run.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
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

from notebook_jobs.tasks.chart import SUCCEEDED, markdown_image, trend_svg
from notebook_jobs.tasks.engine.numbers import number_text, signed
from notebook_jobs.tasks.engine.run_context import SERIES_TRIGGERS, tick_text, zone_of
from notebook_jobs.tasks.notebook import artifact_key
from notebook_jobs.tasks.ui_links import artifact_url, run_url

HISTORY_RUNS = 50
CHARTS = 6  # numeric outputs charted, at most
OUTPUT_COLUMNS = 8  # glued values shown as columns, at most
RUN_FLOW = "run-notebook"  # flows.run_notebook.FLOW_NAME (tasks import no flows)
NOTEBOOK_TAG = "notebook:"
FINISHED = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
HISTORY_KIND = "history"


@dataclass
class HistoryRun:
    """One run of a notebook, as the history shows it."""

    id: str
    name: str
    started: datetime | None
    status: str  # completed, cached, failed, crashed, cancelled
    trigger: str  # cli, api, ui, schedule, batch
    deployment: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    changes: dict[str, float] = field(default_factory=dict)  # from the run before
    scheduled: datetime | None = None  # the tick it is for (its expected start)
    zone: str | None = None  # its schedule's time zone

    @property
    def for_tick(self) -> str:
        """The tick a scheduled or backfill run is for, in its schedule's zone; else ''."""
        if self.trigger not in SERIES_TRIGGERS or self.scheduled is None:
            return ""
        return tick_text(self.scheduled.astimezone(zone_of([self.zone])))

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCEEDED

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["started"] = self.started.isoformat() if self.started else None
        document["scheduled"] = self.scheduled.isoformat() if self.scheduled else None
        document["for"] = self.for_tick or None
        return document


def scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def numeric(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


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


def with_changes(runs: list[HistoryRun]) -> list[HistoryRun]:
    """Each numeric output's change from the nearest older run that reported it."""
    for i, run in enumerate(runs):
        run.changes = {}
        for name, value in run.outputs.items():
            if not numeric(value):
                continue
            before = next(
                (
                    older.outputs[name]
                    for older in runs[i + 1 :]
                    if numeric(older.outputs.get(name))
                ),
                None,
            )
            if before is not None:
                run.changes[name] = value - before
    return runs


def merged(current: HistoryRun | None, older: list[HistoryRun]) -> list[HistoryRun]:
    """The run being published (not finished in the API yet) first, then the rest."""
    runs = [r for r in older if current is None or r.id != current.id]
    return with_changes(([current] if current else []) + runs)[:HISTORY_RUNS]


def output_columns(runs: list[HistoryRun]) -> list[str]:
    """The scalar outputs, newest runs' first, at most ``OUTPUT_COLUMNS``."""
    columns: list[str] = []
    for run in runs:
        for name, value in run.outputs.items():
            if scalar(value) and name not in columns:
                columns.append(name)
    return columns[:OUTPUT_COLUMNS]


def _cell(text: str, limit: int = 80) -> str:
    flat = " ".join(str(text).split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat.replace("|", "\\|")


def value_text(value: Any, change: float | None = None) -> str:
    """A glued value as the table shows it: numbers at full precision, with the change."""
    if numeric(value):
        text = number_text(value)
        if change:
            text += f" ({signed(change)})"
        return text
    if isinstance(value, str):
        return value
    return json.dumps(value)


def started_by(run: HistoryRun) -> str:
    """``schedule · daily``; a command-line run's deployment (the general one that
    ``nbjobs run`` goes through on a worker) is not a choice its user made: ``cli``."""
    if run.deployment and run.trigger != "cli":
        return f"{run.trigger} · {run.deployment}"
    return run.trigger


def _when(started: datetime | None) -> str:
    if started is None:
        return ""
    return started.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def history_markdown(label: str, runs: list[HistoryRun], ui_url: str | None = None) -> str:
    """The history artifact: charts of the numeric outputs, then a row per run."""
    lines = [f"# {label}: the last {len(runs)} runs", ""]
    if not runs:
        return "\n".join([*lines, "No finished runs yet."])
    oldest_first = list(reversed(runs))
    charted = [
        name for name in output_columns(runs) if any(numeric(r.outputs.get(name)) for r in runs)
    ][:CHARTS]
    for name in charted:
        points = [
            (float(r.outputs[name]) if numeric(r.outputs.get(name)) else None, r.status)
            for r in oldest_first
        ]
        lines += [markdown_image(f"{name} over the last {len(runs)} runs", trend_svg(name, points))]
    if charted:
        lines += ["", "_Oldest on the left; a red mark is a run that did not complete._", ""]
    columns = output_columns(runs)
    series = any(run.for_tick for run in runs)  # a scheduled notebook: the tick each is for
    lines += [
        "| run | "
        + ("for | " if series else "")
        + "started (UTC) | by | status | seconds | "
        + "".join(f"{_cell(name, 40)} | " for name in columns)
        + "parameters |",
        "|---|"
        + ("---|" if series else "")
        + "---|---|---|---:|"
        + "---:|" * len(columns)
        + "---|",
    ]
    for run in runs:
        link = run_url(run.id, ui_url)
        title = _cell(run.name, 90)  # a name is at most 80 and its id
        status = run.status if run.succeeded else f"**{run.status}**"
        if run.error and not run.succeeded:
            status += f": {_cell(run.error, 120)}"
        values = "".join(
            f"{_cell(value_text(run.outputs[name], run.changes.get(name)), 60)} | "
            if name in run.outputs
            else " | "
            for name in columns
        )
        parameters = " ".join(
            f"{name}={value if isinstance(value, str) else json.dumps(value)}"
            for name, value in run.parameters.items()
        )
        seconds = f"{run.seconds:.2f}" if run.seconds is not None else ""
        tick = f"{run.for_tick} | " if series else ""
        lines.append(
            f"| {f'[{title}]({link})' if link else title} | {tick}{_when(run.started)} | "
            f"{started_by(run)} | {status} | {seconds} | {values}{_cell(parameters, 120)} |"
        )
    return "\n".join(lines)


def history_key(label: str) -> str:
    """The artifact key of a notebook's history: ``report-history``."""
    return artifact_key(label, HISTORY_KIND)


def history_link(label: str) -> str | None:
    """The history's page in the default UI (every version of the artifact)."""
    return artifact_url(history_key(label))


def without_defaults(runs: list[HistoryRun], defaults: dict[str, Any] | None) -> list[HistoryRun]:
    """Each run's parameters less those equal to the notebook's defaults: what differs."""
    if defaults:
        missing = object()
        for run in runs:
            run.parameters = {
                k: v for k, v in run.parameters.items() if defaults.get(k, missing) != v
            }
    return runs


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


__all__ = [
    "HISTORY_RUNS",
    "HistoryRun",
    "history_key",
    "history_link",
    "history_markdown",
    "last_runs",
    "merged",
    "publish_history",
    "read_history",
]
