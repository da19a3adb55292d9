"""A scheduled notebook as a series: the date each run is for, overlaps, missed ticks.

**The run's context.** A run is *for* its expected start time: a scheduled run's tick,
a backfill run's tick (``nbjobs backfill`` creates it scheduled at that time, in the
past), a run started by hand the moment it was asked for. Prefect sets a run's expected
start time once, from its first Scheduled state, and keeps it across retries, so an
attempt 2 is for the same day as attempt 1. It is read in the schedule's time zone.

**Overlap** (``nbjobs deploy --on-overlap``): ``queue`` and ``cancel-new`` are Prefect's
deployment concurrency (a limit of 1, ``ENQUEUE`` or ``CANCEL_NEW``), enforced by the
server before a run starts. ``skip`` is this module's: a run that finds an earlier run
of its deployment still running ends Cancelled before staging, saying which run.

**Missed ticks** (``nbjobs deploy --catch-up``): a scheduled run that starts later than
Prefect calls a run late (``PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS``, 15 s)
was missed: the worker or the server was away at its tick. ``all`` (Prefect's own
behaviour) runs every missed tick; ``latest`` only the newest one due; ``none`` none,
each ending Cancelled with the reason, shown in the notebook's history. A run held back
by ``queue`` is not missed: it waited by choice.

Both are decided in the flow, not the worker, so they hold for ``nbjobs serve`` and for
``prefect worker start`` alike.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from prefect import get_client, get_run_logger
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import State, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Cancelled

from notebook_jobs.flows.run_labels import run_trigger
from notebook_jobs.tasks.engine.run_context import logical_date, tick_text, zone_name, zone_of
from notebook_jobs.tasks.history_table import HistoryRun
from notebook_jobs.tasks.models import RunContext
from notebook_jobs.tasks.names import CATCH_UP_TAG as CATCH_UP_TAG
from notebook_jobs.tasks.names import OVERLAP_TAG as OVERLAP_TAG
from notebook_jobs.tasks.ui_links import run_url

QUEUED_STATE = "AwaitingConcurrencySlot"  # Prefect's, for a run its deployment's limit holds


def schedule_zone(deployment: DeploymentResponse | None) -> tzinfo:
    """The time zone of the deployment's schedule; else this machine's."""
    schedules = (deployment.schedules or []) if deployment is not None else []
    return zone_of([getattr(item.schedule, "timezone", None) for item in schedules])


def expected_start() -> datetime:
    """This run's tick: its expected start time (now, outside a flow run)."""
    context = FlowRunContext.get()
    found = context.flow_run.expected_start_time if context and context.flow_run else None
    return found or datetime.now(timezone.utc)


def run_context(deployment: DeploymentResponse | None, trigger: str, zone: tzinfo) -> RunContext:
    """What this run is, for the notebook that asks (``# nbjobs: logical_date``)."""
    when = expected_start().astimezone(zone)
    run_id = flow_run.get_id()
    return RunContext(
        logical_date=logical_date(when),
        scheduled_time=when.isoformat(),
        timezone=zone_name(zone),
        trigger=trigger,
        attempt=max(flow_run.get_run_count(), 1),
        run_id=run_id,
        deployment=f"run-notebook/{deployment.name}" if deployment is not None else None,
        run_url=run_url(run_id) if run_id else None,
    )


def policy(tags: list[str], prefix: str) -> str | None:
    """The value of a ``prefix<value>`` tag, if the deployment has one."""
    return next((tag.removeprefix(prefix) for tag in tags if tag.startswith(prefix)), None)


def late_after() -> timedelta:
    """How late a scheduled run is when Prefect marks it Late (its server setting)."""
    from prefect.settings import get_current_settings

    return get_current_settings().server.services.late_runs.after_seconds


async def skip_reason(deployment: DeploymentResponse, zone: tzinfo) -> str | None:
    """Why this run of ``deployment`` must not run (its overlap or catch-up policy says
    so), or ``None``: the message of the Cancelled state it then ends in."""
    tags = list(deployment.tags or [])
    catch_up = policy(tags, CATCH_UP_TAG)
    overlap = policy(tags, OVERLAP_TAG)
    context = FlowRunContext.get()
    this = context.flow_run if context else None
    if this is None or (catch_up in (None, "all") and overlap != "skip"):
        return None
    tick = expected_start()
    now = datetime.now(timezone.utc)
    async with get_client() as client:
        missed = this.auto_scheduled and now - tick > late_after()
        # a retry is late by design: never a missed tick
        if catch_up in ("none", "latest") and missed and flow_run.get_run_count() <= 1:
            states = await client.read_flow_run_states(this.id)
            if not any(state.name == QUEUED_STATE for state in states):
                late = _duration(now - tick)
                due = tick_text(tick.astimezone(zone))
                if catch_up == "none":
                    return (
                        f"missed: due {due}, taken {late} late (the worker or the server was "
                        "away); catch-up none runs no missed tick"
                    )
                later = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
                        expected_start_time=FlowRunFilterExpectedStartTime(
                            after_=tick + timedelta(microseconds=1), before_=now
                        ),
                        tags=FlowRunFilterTags(all_=["auto-scheduled"]),
                        id=FlowRunFilterId(not_any_=[this.id]),
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                    limit=1,
                )
                if later and later[0].expected_start_time:
                    newer = tick_text(later[0].expected_start_time.astimezone(zone))
                    return (
                        f"missed: due {due}; the tick of {newer} is due too, and catch-up "
                        "latest runs only the latest missed tick"
                    )
        if overlap == "skip":
            running = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
                    id=FlowRunFilterId(not_any_=[this.id]),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
            # the earlier tick goes on: two runs starting together do not skip each other
            earlier = [r for r in running if _before(r, tick, str(this.id))]
            if earlier:
                first = earlier[0]
                start = first.expected_start_time or now
                return (
                    f"skipped: {first.name} (for {tick_text(start.astimezone(zone))}) was "
                    "still running; on-overlap skip"
                )
    return None


async def skipped(reason: str, label: str, run_id: str, zone: tzinfo) -> State[Any]:
    """End this run Cancelled with ``reason``, before anything was staged; the notebook's
    history shows it."""
    from notebook_jobs.flows.run_ending import publish_row

    get_run_logger().warning("%s", reason)
    await publish_row(
        label,
        HistoryRun(
            id=run_id,
            name=flow_run.get_name() or run_id,
            started=expected_start(),
            status="cancelled",
            trigger=await run_trigger(),
            error=reason,
            scheduled=expected_start(),
            zone=zone_name(zone),
        ),
    )
    return Cancelled(message=reason)


def _before(other: Any, tick: datetime, own_id: str) -> bool:
    start = other.expected_start_time
    if start is None:
        return True
    return bool(start < tick or (start == tick and str(other.id) < own_id))


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
