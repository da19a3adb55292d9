"""A scheduled notebook as a series, on a real server with real schedules (short intervals).

Each run is for its tick (``# nbjobs: logical_date``, ``scheduled_time``) in its schedule's
zone; a retry keeps it; ``nbjobs backfill`` makes one run per tick, at most N at a time,
idempotent; ``--on-overlap`` and ``--catch-up`` do what they say with a worker that is
slower than the schedule, or stopped across ticks.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from notebook_jobs.tasks.engine.run_context import tick_text
from tests.conftest import DATA
from tests.deployments.conftest import BIN, ROOT, HTTPStack
from tests.processes import stop

SERIES = str(DATA / "series.ipynb")
FINAL = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]


def deploy(stack: HTTPStack, name: str, *args: str) -> str:
    done = stack.nbjobs("deploy", SERIES, "--name", name, *args)
    assert done.returncode == 0, done.stderr
    return stack.api.deployment_id("run-notebook", name)


def runs_of(stack: HTTPStack, deployment_id: str, **flow_runs: Any) -> list[dict[str, Any]]:
    body = {
        "flow_runs": {"deployment_id": {"any_": [deployment_id]}, **flow_runs},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": 200,
    }
    return list(stack.api.request("POST", "/flow_runs/filter", json=body).json())


def finished(stack: HTTPStack, deployment_id: str) -> list[dict[str, Any]]:
    return runs_of(stack, deployment_id, state={"type": {"any_": FINAL}})


def wait_until(what: str, found: Callable[[], Any], timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"after {timeout:.0f} s: {what}")


def retire(stack: HTTPStack, deployment_id: str) -> None:
    """Pause the deployment's schedule and delete the runs it had made ahead."""
    stack.api.request("PATCH", f"/deployments/{deployment_id}", json={"paused": True})
    for run in runs_of(stack, deployment_id, state={"type": {"any_": ["SCHEDULED"]}}):
        stack.api.request("DELETE", f"/flow_runs/{run['id']}")


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def retiring(http_stack: HTTPStack) -> Iterator[list[str]]:
    """Deployment ids whose schedules stop at the end of the test, whatever happened."""
    ids: list[str] = []
    yield ids
    for deployment_id in ids:
        retire(http_stack, deployment_id)


def test_a_scheduled_run_is_for_its_tick_and_a_retry_keeps_it(
    http_stack: HTTPStack, retiring: list[str], tmp_path: Path
) -> None:
    """Every 10 s in Asia/Kolkata (+05:30): each run's notebook gets its own tick; every run
    fails (fail_on any) until the file ``fixed`` exists; the UI's Retry of one then runs it
    again for the same tick, as attempt 2."""
    fixed = tmp_path / "fixed"
    name = f"series-{uuid.uuid4().hex[:6]}"
    deployment_id = deploy(
        http_stack,
        name,
        "--every",
        "10s",
        "--timezone",
        "Asia/Kolkata",
        "-p",
        "fail_on",
        "any",
        "-p",
        "fixed",
        str(fixed),
    )
    retiring.append(deployment_id)
    runs = wait_until(
        "two scheduled runs ended",
        lambda: (found := finished(http_stack, deployment_id))[1:] and found,
    )
    zone = ZoneInfo("Asia/Kolkata")
    for run in runs[:2]:
        assert "auto-scheduled" in run["tags"] and "trigger:schedule" in run["tags"]
        assert run["state"]["type"] == "FAILED", run["state"]
        result = http_stack.api.result(run["id"])
        tick = instant(run["expected_start_time"]).astimezone(zone)
        outputs = result["outputs"]
        assert outputs["due"] == tick.isoformat() and outputs["due"].endswith("+05:30")
        assert outputs["report_date"] == tick.date().isoformat()
        assert outputs["trigger"] == "schedule" and outputs["attempt"] == 1
        assert outputs["deployment"] == f"run-notebook/{name}"
        assert outputs["run_id"] == run["id"]
        assert result["context"]["timezone"] == "Asia/Kolkata"
        assert result["parameters_from"]["report_date"] == "context"
        # the run is named by its tick: hundreds of them stay apart in the UI
        assert tick_text(tick) in run["name"], run["name"]
    first = runs[0]
    fixed.write_text("")
    # what the UI's Retry button sends
    http_stack.api.request(
        "POST",
        f"/flow_runs/{first['id']}/set_state",
        json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True},
    )
    retried = wait_until(
        "the retried run completed",
        lambda: (
            (run := http_stack.api.flow_run(first["id"]))["state"]["type"] == "COMPLETED" and run
        ),
    )
    assert retried["run_count"] == 2
    assert retried["expected_start_time"] == first["expected_start_time"]
    result = http_stack.api.result(first["id"])
    assert result["outputs"]["attempt"] == 2 and result["context"]["attempt"] == 2
    tick = instant(first["expected_start_time"]).astimezone(zone)
    assert result["outputs"]["due"] == tick.isoformat()
    assert result["outputs"]["report_date"] == tick.date().isoformat()


def nbjobs_backfill(stack: HTTPStack, *args: str) -> subprocess.CompletedProcess[str]:
    return stack.nbjobs("backfill", *args)


def test_a_backfill_makes_one_run_per_tick_at_most_n_at_a_time_and_once(
    http_stack: HTTPStack, tmp_path: Path
) -> None:
    fixed = tmp_path / "fixed"
    name = f"backfill-{uuid.uuid4().hex[:6]}"
    deployment_id = deploy(
        http_stack,
        name,
        "-p",
        "fail_on",
        "2026-01-05",
        "-p",
        "fixed",
        str(fixed),
        "-p",
        "seconds",
        "1",
    )
    range_ = ("--start", "2026-01-01", "--end", "2026-01-10", "--every", "1d")
    dry = nbjobs_backfill(http_stack, name, *range_, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "10 ticks from 2026-01-01 to 2026-01-10 (UTC), 10 to run" in dry.stdout
    assert not runs_of(http_stack, deployment_id)  # a dry run creates nothing

    done = nbjobs_backfill(http_stack, name, *range_, "--max-concurrency", "3")
    assert done.returncode == 1, done.stdout + done.stderr  # one date failed
    backfill_id = re.search(r"backfill (\w{6}) of", done.stdout).group(1)  # type: ignore[union-attr]
    assert "10 runs in" in done.stdout and "9 completed, 1 failed" in done.stdout, done.stdout
    runs = finished(http_stack, deployment_id)
    assert len(runs) == 10
    assert all(f"backfill:{backfill_id}" in run["tags"] for run in runs)
    dates = {}
    for run in runs:
        result = http_stack.api.result(run["id"])
        assert result["context"]["trigger"] == "backfill"
        dates[result["outputs"]["report_date"]] = run["state"]["type"]
    assert sorted(dates) == [f"2026-01-{day:02d}" for day in range(1, 11)]
    assert [day for day, state in dates.items() if state != "COMPLETED"] == ["2026-01-05"]
    # never more than three at a time
    spans = sorted((instant(r["start_time"]), instant(r["end_time"])) for r in runs)
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert 1 <= most <= 3, spans
    # its table: a row per date, filled in
    table = http_stack.api.request(
        "GET", f"/artifacts/{backfill_key(http_stack, backfill_id)}/latest"
    ).json()["data"]
    rows = [line for line in table.splitlines() if line.startswith("| 2026-01-")]
    assert len(rows) == 10 and sum("| completed |" in row for row in rows) == 9, table

    again = nbjobs_backfill(http_stack, name, *range_)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 to run" in again.stdout
    assert len(runs_of(http_stack, deployment_id)) == 10  # no second run for a date

    fixed.write_text("")
    repaired = nbjobs_backfill(http_stack, name, *range_, "--skip-completed")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "1 to run" in repaired.stdout
    runs = finished(http_stack, deployment_id)
    assert len(runs) == 11
    newest = max(runs, key=lambda run: run["created"])
    assert newest["state"]["type"] == "COMPLETED"
    assert http_stack.api.result(newest["id"])["outputs"]["report_date"] == "2026-01-05"


def backfill_key(stack: HTTPStack, backfill_id: str) -> str:
    body = {"artifacts": {"key": {"like_": f"%-backfill-{backfill_id}"}}}
    found = stack.api.request("POST", "/artifacts/filter", json=body).json()
    assert found, f"no table artifact for backfill {backfill_id}"
    return str(found[0]["key"])


def test_a_backfill_refuses_what_it_cannot_do_in_one_line(http_stack: HTTPStack) -> None:
    name = f"unscheduled-{uuid.uuid4().hex[:6]}"
    deploy(http_stack, name)
    for args, message in [
        ((name, "--start", "2026-01-01", "--end", "2026-01-02"), "has no schedule; give"),
        (
            ("nope", "--start", "2026-01-01", "--end", "2026-01-02"),
            "no deployment run-notebook/nope",
        ),
        ((name, "--start", "January", "--end", "2026-01-02", "--every", "1d"), "is not a date"),
        (
            (name, "--start", "2026-01-01", "--end", "2026-01-02", "--every", "daily"),
            "not a duration",
        ),
        ((name, "--start", "2026-01-05", "--end", "2026-01-02", "--every", "1d"), "is before"),
    ]:
        done = nbjobs_backfill(http_stack, *args)
        assert done.returncode == 2, done.stdout + done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_slow_notebook_under_each_overlap_policy(
    http_stack: HTTPStack, retiring: list[str]
) -> None:
    """Every 5 s, a run of 9 s: queue waits (no two runs overlap, one waited for a slot);
    skip and cancel-new end the new tick's run Cancelled, skip naming the run still going."""
    ids = {}
    for policy in ("queue", "skip", "cancel-new"):
        name = f"overlap-{policy}-{uuid.uuid4().hex[:4]}"
        ids[policy] = deploy(
            http_stack, name, "--every", "5s", "--on-overlap", policy, "-p", "seconds", "9"
        )
        retiring.append(ids[policy])

    def waited(run: dict[str, Any]) -> bool:
        """Its tick came while the run before was going: it started late, and completed."""
        return bool(
            run["state"]["type"] == "COMPLETED"
            and instant(run["start_time"]) - instant(run["expected_start_time"])
            > timedelta(seconds=3)
        )

    def seen() -> bool:
        queued = finished(http_stack, ids["queue"])
        skipped = finished(http_stack, ids["skip"])
        cancelled = finished(http_stack, ids["cancel-new"])
        return (
            any(waited(r) for r in queued)
            and {"COMPLETED", "CANCELLED"} <= {r["state"]["type"] for r in skipped}
            and {"COMPLETED", "CANCELLED"} <= {r["state"]["type"] for r in cancelled}
        )

    wait_until("every policy was seen at work", seen, timeout=240)
    for deployment_id in ids.values():
        retire(http_stack, deployment_id)
    queued = [r for r in finished(http_stack, ids["queue"]) if r["start_time"]]
    spans = sorted((instant(r["start_time"]), instant(r["end_time"])) for r in queued)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert all(r["state"]["type"] == "COMPLETED" for r in queued)
    # the one that waited was held by the server until a slot was free
    held = [r for r in queued if waited(r)]
    states = http_stack.api.request("GET", f"/flow_run_states/?flow_run_id={held[0]['id']}")
    assert "AwaitingConcurrencySlot" in {state["name"] for state in states.json()}
    for run in finished(http_stack, ids["skip"]):
        if run["state"]["type"] == "CANCELLED":
            message = run["state"]["message"]
            assert (
                message.startswith("skipped: ") and "was still running; on-overlap skip" in message
            )
    server_cancelled = [
        r for r in finished(http_stack, ids["cancel-new"]) if r["state"]["type"] == "CANCELLED"
    ]
    assert all(
        r["state"]["message"] == "Deployment concurrency limit reached." for r in server_cancelled
    )
    assert server_cancelled


@pytest.mark.timeout(720)  # real ticks 30 s apart; slower when the machine is busy
def test_ticks_missed_while_the_worker_was_down_under_each_catch_up_policy(
    http_stack: HTTPStack, retiring: list[str], tmp_path: Path
) -> None:
    """Every 30 s, on a pool of its own: its worker runs a first tick of each deployment, is
    stopped across the next three, and started again: all runs the three, latest the last
    one, none zero; the others end Cancelled saying why."""
    pool = f"catch-up-{uuid.uuid4().hex[:6]}"
    env = {
        **http_stack.env,
        "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "4",
        "PREFECT_WORKER_PREFETCH_SECONDS": "0",  # stopped, it has taken no later tick early
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(BIN / "nbjobs"), "serve", "--pool", pool, "--no-adhoc", "--kernel-pool", "0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )

    ids = {}
    for policy in ("all", "latest", "none"):
        name = f"catch-up-{policy}-{uuid.uuid4().hex[:4]}"
        ids[policy] = deploy(
            http_stack, name, "--every", "30s", "--catch-up", policy, "--pool", pool
        )
        retiring.append(ids[policy])
    worker = start_worker()
    try:
        first = wait_until(
            "a first tick of each ran",
            lambda: (
                all(finished(http_stack, i) for i in ids.values())
                and max(
                    instant(finished(http_stack, i)[0]["expected_start_time"]) for i in ids.values()
                )
            ),
        )
        stop(worker)  # down across the next three ticks
        # the last tick the stopped worker had taken: on a busy machine it may have taken
        # the next one too, as it was stopped (left Running: not one of the missed ones)
        first = max(
            instant(run["expected_start_time"])
            for deployment_id in ids.values()
            for run in runs_of(http_stack, deployment_id)
            if run["state"]["type"] != "SCHEDULED"
        )
        ticks = wait_until(
            "three ticks of each while the worker is down",
            lambda: (
                found := [
                    r for r in runs_of(http_stack, ids["none"])
                    if instant(r["expected_start_time"]) > first
                ]
            )[2:] and found[:3],
        )  # fmt: skip
        missed = [instant(t["expected_start_time"]) for t in ticks]
        # started again once the third tick is 5 s late: late for this worker (4 s), and
        # 25 s before the fourth tick, for its start with both cores busy (15 s, with ticks
        # 20 s apart, were too few beside the rest of the suite: the third tick was taken
        # after the fourth was due, and `latest` rightly cancelled it)
        while datetime.now(missed[2].tzinfo) < missed[2] + timedelta(seconds=5):
            time.sleep(0.5)
        worker = start_worker()

        def ended(policy: str) -> list[dict[str, Any]]:
            runs = finished(http_stack, ids[policy])
            return [r for r in runs if first < instant(r["expected_start_time"]) <= missed[2]]

        outcome = wait_until(
            "the three missed ticks of each ended",
            lambda: all(len(ended(p)) == 3 for p in ids) and {p: ended(p) for p in ids},
            timeout=240,
        )
    finally:
        for deployment_id in ids.values():
            retire(http_stack, deployment_id)
        stop(worker)
        log.close()
    states = {p: [r["state"]["type"] for r in runs] for p, runs in outcome.items()}
    assert states["all"] == ["COMPLETED"] * 3, (
        states,
        (tmp_path / "worker.log").read_text()[-3000:],
    )
    assert states["latest"] == ["CANCELLED", "CANCELLED", "COMPLETED"], states
    assert states["none"] == ["CANCELLED"] * 3, states
    for run in outcome["latest"][:2]:
        assert "is due too, and catch-up latest runs only the latest" in run["state"]["message"]
    for run in outcome["none"]:
        assert run["state"]["message"].startswith("missed: due ")
        assert "catch-up none runs no missed tick" in run["state"]["message"]
    # the history shows what happened to each tick
    label = "series"
    history = http_stack.api.request("GET", f"/artifacts/{label}-history/latest").json()["data"]
    assert "catch-up none runs no missed tick" in history


def test_an_interrupted_backfill_leaves_its_runs_going_and_says_how_to_cancel_them(
    http_stack: HTTPStack,
) -> None:
    name = f"interrupted-{uuid.uuid4().hex[:6]}"
    deployment_id = deploy(http_stack, name, "-p", "seconds", "30")
    backfill = subprocess.Popen(
        [str(BIN / "nbjobs"), "backfill", name, "--start", "2026-02-01", "--end", "2026-02-06",
         "--every", "1d", "--max-concurrency", "2"],
        env=http_stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(
            "two runs of the backfill running",
            lambda: (
                len(runs_of(http_stack, deployment_id, state={"type": {"any_": ["RUNNING"]}})) == 2
            ),
        )
        backfill.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = backfill.communicate(timeout=60)
    finally:
        if backfill.poll() is None:
            backfill.kill()
    assert backfill.returncode == 130, out + err
    backfill_id = re.search(r"backfill (\w{6}) of", out).group(1)  # type: ignore[union-attr]
    assert "no more runs are created; the 2 it made that have not ended go on" in err, err
    assert f"Cancel them: nbjobs backfill {name} --cancel {backfill_id}" in err, err
    assert "Traceback" not in err
    made = runs_of(http_stack, deployment_id)
    assert len(made) == 2 and all(r["state"]["type"] == "RUNNING" for r in made), made
    cancelled = http_stack.nbjobs("backfill", name, "--cancel", backfill_id)
    assert cancelled.returncode == 0 and "2 runs cancelled" in cancelled.stdout, cancelled
    ended = wait_until(
        "both runs cancelled",
        lambda: (found := finished(http_stack, deployment_id))[1:] and found,
    )
    assert [r["state"]["type"] for r in ended] == ["CANCELLED", "CANCELLED"]
