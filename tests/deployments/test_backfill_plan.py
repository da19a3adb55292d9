"""What a backfill plans: its range, its ticks by Prefect's schedule code, what each tick
gets (pure: no server)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from notebook_jobs.blocks.exceptions import NotebookInputError
from notebook_jobs.deployments.backfill_plan import Tick, parse_bound, schedule_ticks
from notebook_jobs.tasks.engine.run_context import duration_seconds, tick_text

pytestmark = pytest.mark.unit

BERLIN = ZoneInfo("Europe/Berlin")


def test_a_range_is_whole_days_in_the_schedules_zone() -> None:
    assert parse_bound("2026-03-27", BERLIN, end=False) == datetime(2026, 3, 27, tzinfo=BERLIN)
    end = parse_bound("2026-03-31", BERLIN, end=True)
    assert end.date().isoformat() == "2026-03-31" and (end.hour, end.minute) == (23, 59)
    assert parse_bound("2026-03-27T06:30", BERLIN, end=False).hour == 6
    with pytest.raises(NotebookInputError, match="is not a date"):
        parse_bound("next monday", BERLIN, end=False)


def test_weekday_ticks_keep_their_local_time_across_the_clock_change() -> None:
    """Berlin moves to summer time on 2026-03-29: 06:00 stays 06:00, its UTC hour moves."""
    deployment = {
        "name": "daily",
        "schedules": [{"schedule": {"cron": "0 6 * * 1-5", "timezone": "Europe/Berlin"}}],
    }
    ticks = schedule_ticks(
        deployment,
        parse_bound("2026-03-26", BERLIN, end=False),
        parse_bound("2026-04-01", BERLIN, end=True),
        None,
    )
    assert [tick_text(t) for t in ticks] == [
        "2026-03-26 06:00", "2026-03-27 06:00", "2026-03-30 06:00", "2026-03-31 06:00",
        "2026-04-01 06:00",
    ]  # fmt: skip
    assert [t.utcoffset().total_seconds() / 3600 for t in ticks] == [1, 1, 2, 2, 2]  # type: ignore[union-attr]


def test_every_gives_ticks_to_a_deployment_without_a_schedule() -> None:
    deployment = {"name": "adhoc-report", "schedules": []}
    start = parse_bound("2026-01-01", BERLIN, end=False)
    end = parse_bound("2026-01-03", BERLIN, end=True)
    ticks = schedule_ticks(deployment, start, end, duration_seconds("12h"))
    assert [tick_text(t) for t in ticks] == [
        "2026-01-01", "2026-01-01 12:00", "2026-01-02", "2026-01-02 12:00", "2026-01-03",
        "2026-01-03 12:00",
    ]  # fmt: skip
    with pytest.raises(NotebookInputError, match="has no schedule; give the ticks with --every"):
        schedule_ticks(deployment, start, end, None)


def test_what_a_tick_with_runs_gets() -> None:
    when = datetime(2026, 1, 5, tzinfo=BERLIN)

    def run(state: str) -> dict[str, object]:
        return {"state": {"type": state}}

    assert Tick(when).action(skip_completed=False) == "run"
    assert Tick(when, [run("FAILED"), run("COMPLETED")]).action(True) == "has a run: completed"
    assert Tick(when, [run("RUNNING")]).action(True) == "has a run going"
    failed = Tick(when, [run("FAILED")])
    assert failed.action(False) == "has a run: failed (--skip-completed runs it again)"
    assert failed.action(True) == "run again"


def test_durations_read_as_a_user_writes_them() -> None:
    assert duration_seconds("30s") == 30 and duration_seconds("15m") == 900
    assert duration_seconds("1d") == 86400 and duration_seconds("90") == 90
    for wrong in ("daily", "0s", "-1h", ""):
        with pytest.raises(ValueError, match="write it as 30s, 5m, 2h, 1d or 1w"):
            duration_seconds(wrong)
