"""What a backfill will do: the ticks of a deployment's schedule in a range, the runs
each already has, and the table that shows them (``nbjobs backfill``, ``backfill.py``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from notebook_jobs.blocks.exceptions import NotebookInputError
from notebook_jobs.deployments.api import PrefectHTTP
from notebook_jobs.tasks.engine.run_context import tick_text, zone_of
from notebook_jobs.tasks.ui_links import run_url

MAX_TICKS = 10_000  # a month of minutes is 44,640: say so instead of creating them
GOING = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
TABLE_COLUMNS = 6  # glued values shown per tick


@dataclass
class Tick:
    """One tick of the range, its earlier runs, and the run this backfill follows for it."""

    when: datetime  # in the schedule's time zone
    earlier: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    name: str | None = None
    status: str = "pending"
    seconds: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    made: bool = False  # by this backfill

    def action(self, skip_completed: bool) -> str:
        """``run``, or why not: ``has a run: completed``..."""
        if not self.earlier:
            return "run"
        states = [run["state"]["type"] if run.get("state") else "SCHEDULED" for run in self.earlier]
        if any(state in GOING for state in states):
            return "has a run going"
        if "COMPLETED" in states:
            return "has a run: completed"
        if skip_completed:
            return "run again"
        return f"has a run: {states[-1].lower()} (--skip-completed runs it again)"


def parse_bound(text: str, zone: tzinfo, *, end: bool) -> datetime:
    """``2026-01-31`` (the whole day, for an end) or ``2026-01-31T06:00`` in ``zone``."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise NotebookInputError(
                f"{text!r} is not a date; write 2026-01-31 or 2026-01-31T06:00"
            ) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=zone)
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    return start + timedelta(days=1, microseconds=-1) if end else start


def deployment_zone(deployment: dict[str, Any]) -> tzinfo:
    """The time zone of the deployment's schedule, as its runs read it; else this machine's."""
    return zone_of(
        [(item.get("schedule") or {}).get("timezone") for item in deployment.get("schedules") or []]
    )


def schedule_ticks(
    deployment: dict[str, Any], start: datetime, end: datetime, every: float | None
) -> list[datetime]:
    """The ticks of the deployment's schedules (or of ``every`` from ``start``) in
    [start, end], computed by Prefect's own schedule code, as its scheduler does."""
    from prefect.server.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

    zone = start.tzinfo
    zone_name = getattr(zone, "key", None) or "UTC"
    schedules: list[Any] = []
    if every:
        schedules.append(
            IntervalSchedule(
                interval=timedelta(seconds=every), anchor_date=start, timezone=zone_name
            )
        )
    for item in deployment.get("schedules") or [] if not every else []:
        spec = item.get("schedule") or {}
        kind = (
            CronSchedule
            if "cron" in spec
            else IntervalSchedule
            if "interval" in spec
            else RRuleSchedule
        )
        schedules.append(kind.model_validate(spec))
    if not schedules:
        raise NotebookInputError(
            f"run-notebook/{deployment['name']} has no schedule; give the ticks with --every "
            "(e.g. --every 1d)"
        )

    async def dates() -> set[datetime]:
        found: set[datetime] = set()
        for schedule in schedules:
            cursor = start
            while True:
                batch = await schedule.get_dates(n=1000, start=cursor, end=end)
                found.update(batch)
                if len(found) > MAX_TICKS:
                    raise NotebookInputError(
                        f"the range has more than {MAX_TICKS} ticks; backfill a shorter "
                        "range at a time"
                    )
                if len(batch) < 1000:
                    break
                cursor = max(batch) + timedelta(microseconds=1)
        return found

    return sorted(moment.astimezone(zone) for moment in asyncio.run(dates()))


def existing_runs(
    api: PrefectHTTP, deployment_id: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """The deployment's runs whose expected start is in [start, end]."""
    return api.flow_runs(
        {
            "flow_runs": {
                "deployment_id": {"any_": [deployment_id]},
                "expected_start_time": {"after_": start.isoformat(), "before_": end.isoformat()},
            },
            "sort": "EXPECTED_START_TIME_ASC",
        }
    )


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def planned_ticks(
    api: PrefectHTTP,
    deployment: dict[str, Any],
    start: datetime,
    end: datetime,
    every: float | None,
) -> list[Tick]:
    """The ticks in [start, end], each with the runs of the deployment already for it."""
    ticks = [Tick(when) for when in schedule_ticks(deployment, start, end, every)]
    by_instant = {tick.when: tick for tick in ticks}
    for run in existing_runs(api, deployment["id"], start, end) if ticks else []:
        expected = run.get("expected_start_time")
        found = by_instant.get(instant(expected)) if expected else None
        if found is not None:
            found.earlier.append(run)
    return ticks


def backfill_table(
    label: str, backfill_id: str, deployment: str, ticks: list[Tick], ui_url: str | None
) -> str:
    """The backfill's table artifact: a row per tick, its run, status, seconds, outputs."""
    from notebook_jobs.tasks.history_table import scalar, value_text

    columns: list[str] = []
    for tick in ticks:
        columns += [k for k, v in tick.outputs.items() if k not in columns and scalar(v)]
    columns = columns[:TABLE_COLUMNS]
    counts = status_counts(ticks)
    lines = [
        f"# {label}: backfill {backfill_id}",
        "",
        f"run-notebook/{deployment}, {len(ticks)} ticks from "
        f"{tick_text(ticks[0].when)} to {tick_text(ticks[-1].when)}: "
        + ", ".join(f"{n} {status}" for status, n in counts.items()),
        "",
        "| for | run | status | seconds | " + "".join(f"{c} | " for c in columns),
        "|---|---|---|---:|" + "---:|" * len(columns),
    ]
    for tick in ticks:
        link = run_url(tick.run_id, ui_url) if tick.run_id else None
        name = (tick.name or tick.run_id or "").replace("|", "\\|")
        run = f"[{name}]({link})" if link else name
        status = tick.status if tick.status == "completed" else f"**{tick.status}**"
        if not tick.made and tick.run_id:
            status += " (earlier run)"
        seconds = f"{tick.seconds:.2f}" if tick.seconds else ""
        values = "".join(
            f"{value_text(tick.outputs[c])} | " if c in tick.outputs else " | " for c in columns
        )
        lines.append(f"| {tick_text(tick.when)} | {run} | {status} | {seconds} | {values}")
    return "\n".join(lines)


def status_counts(ticks: list[Tick]) -> dict[str, int]:
    found: dict[str, int] = {}
    for tick in ticks:
        found[tick.status] = found.get(tick.status, 0) + 1
    return found
