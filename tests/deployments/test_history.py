"""A notebook's runs as a series, on a real server: the ``-history`` artifact, ``nbjobs
runs``, the identity of runs from every door, and a failure told in one line.

One notebook (a copy of the example, under a name of its own) is run from the command
line, over HTTP, from the UI's custom run form (the exact request it sends), by a
schedule and once so that it fails; the history the last run publishes is then read
back through the API and compared with the runs themselves.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from notebook_jobs.tasks.chart import chart_data
from notebook_jobs.tasks.engine.run_context import tick_text, zone_of
from tests.conftest import EXAMPLES
from tests.deployments.conftest import HTTPStack

LABEL = "history_report"
DEPLOYMENT = "history-report"
TYPED_NAME = "Q3 close, EU"
IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\(data:image/svg\+xml;base64,(?P<data>[A-Za-z0-9+/=]+)\)")


def finished_runs(stack: HTTPStack) -> list[dict[str, Any]]:
    """The notebook's finished runs, newest first, as the API lists them."""
    body = {
        "flows": {"name": {"any_": ["run-notebook"]}},
        "flow_runs": {
            "tags": {"all_": [f"notebook:{LABEL}"]},
            "state": {"type": {"any_": ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]}},
        },
        "sort": "EXPECTED_START_TIME_DESC",
        "limit": 200,
    }
    return list(stack.api.request("POST", "/flow_runs/filter", json=body).json())


def history_versions(stack: HTTPStack) -> list[dict[str, Any]]:
    body = {"artifacts": {"key": {"any_": [f"{LABEL.replace('_', '-')}-history"]}}}
    found = stack.api.request("POST", "/artifacts/filter", json=body).json()
    return sorted(found, key=lambda artifact: artifact["created"])


def table_rows(markdown: str) -> list[list[str]]:
    """The history table's rows (after its header and separator)."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]


@pytest.fixture(scope="module")
def series(http_stack: HTTPStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Seven runs of one notebook through every door; what each door gave back."""
    folder = tmp_path_factory.mktemp("history")
    notebook = folder / f"{LABEL}.ipynb"
    shutil.copy(EXAMPLES / "report.ipynb", notebook)
    stack = http_stack
    done = stack.nbjobs("deploy", str(notebook), "--name", DEPLOYMENT, "-p", "label", "weekly")
    assert done.returncode == 0, done.stderr
    deployment_id = stack.api.deployment_id("run-notebook", DEPLOYMENT)
    found: dict[str, Any] = {"notebook": notebook}
    # the command line, twice
    for n in ("3", "5"):
        done = stack.nbjobs("run", str(notebook), "-p", "n", n)
        assert done.returncode == 0, done.stderr
    # over HTTP, as any client calls a deployment
    run_id = stack.api.trigger("run-notebook", DEPLOYMENT, {"parameters": {"n": 4}})
    assert stack.api.wait(run_id, timeout=180)["state"]["type"] == "COMPLETED"
    # the V2 UI's custom run form, byte for byte what it sends (its bundle's
    # deployment_._id.run: the form's name, its empty message, its policy)
    created = httpx.post(
        f"{stack.api_url}/deployments/{deployment_id}/create_flow_run",
        json={
            "name": TYPED_NAME,
            "work_queue_name": None,
            "empirical_policy": {
                "resuming": False,
                "max_retries": 0,
                "retry_delay_seconds": 0,
                "retries": 0,
                "retry_delay": 0,
            },
            "state": {
                "type": "SCHEDULED",
                "message": "",
                "state_details": {
                    "pause_reschedule": False,
                    "deferred": False,
                    "untrackable_result": False,
                    "scheduled_time": None,
                },
            },
            "tags": [],
            "enforce_parameter_schema": True,
            "parameters": {"parameters": {"n": 6, "label": "weekly"}},
        },
        headers=stack.headers(),
    )
    assert created.status_code == 201, created.text
    found["ui"] = stack.api.wait(created.json()["id"], timeout=180)
    # a schedule: the first of its runs, then paused
    soon = (datetime.now(timezone.utc) + timedelta(seconds=8)).isoformat()
    added = httpx.post(
        f"{stack.api_url}/deployments/{deployment_id}/schedules",
        # hourly from a few seconds from now: one run due in the test, the next in an hour
        json=[{"schedule": {"interval": 3600, "anchor_date": soon}, "active": True}],
        headers=stack.headers(),
    )
    assert added.status_code == 201, added.text
    deadline = time.monotonic() + 150
    scheduled: list[dict[str, Any]] = []
    while not scheduled and time.monotonic() < deadline:
        scheduled = [
            run
            for run in finished_runs(stack)
            if "auto-scheduled" in run["tags"] and run["state"]["type"] == "COMPLETED"
        ]
        time.sleep(1)
    assert scheduled, "the schedule made no run"
    paused = httpx.post(
        f"{stack.api_url}/deployments/{deployment_id}/pause_deployment", headers=stack.headers()
    )
    assert paused.status_code in (200, 204), paused.text
    found["scheduled"] = scheduled[0]
    # a failure: n as text fails in cell 3 (range(1, n + 1))
    done = stack.nbjobs("run", str(notebook), "-r", "n", "x")
    assert done.returncode == 1
    # the last run: its history has every run before it
    done = stack.nbjobs("run", str(notebook), "-p", "n", "7")
    assert done.returncode == 0, done.stderr
    found["runs"] = finished_runs(stack)
    found["history"] = history_versions(stack)[-1]
    found["json"] = json.loads(stack.nbjobs("runs", LABEL, "--json").stdout)
    return found


def test_the_history_has_a_row_per_run_with_values_and_changes(series: dict[str, Any]) -> None:
    runs, markdown = series["runs"], series["history"]["data"]
    assert len(runs) >= 7  # 2 command line, HTTP, UI form, schedule, failed, last
    rows = table_rows(markdown)
    assert len(rows) == len(runs), markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| run |"))
    columns = [cell.strip() for cell in header.strip("|").split(" | ")]
    # a scheduled run is among them: the tick each run is for has a column
    assert columns[:6] == ["run", "for", "started (UTC)", "by", "status", "seconds"]
    assert columns[-1] == "parameters"
    assert "total" in columns and "label" in columns
    totals = {"3": 14, "4": 30, "5": 55, "6": 91, "7": 140, "10": 385}
    previous = None
    for run, row in zip(reversed(runs), reversed(rows), strict=True):  # oldest first
        cell = dict(zip(columns, row, strict=True))
        assert f"/v2/runs/flow-run/{run['id']}" in cell["run"]  # the default UI's page
        assert run["name"] in cell["run"]
        if run["state"]["type"] == "FAILED":
            assert cell["status"].startswith("**failed**: cell 3: TypeError"), cell
            assert cell["total"] == ""
            continue
        n = str(run["parameters"]["parameters"].get("n", "10"))
        # the parameters that differ from the notebook's defaults (n = 10, "squares")
        shown = cell["parameters"].split()
        assert ("n=10" not in shown) and (n == "10" or f"n={n}" in shown), cell
        if "auto-scheduled" in run["tags"]:
            assert shown == ["label=weekly"], cell
            tick = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
            # a schedule with no zone: the machine's, as the run itself read it
            assert cell["for"] == tick_text(tick.astimezone(zone_of([None]))), cell
        else:
            assert cell["for"] == "", cell  # a run started by hand is for when it ran
        total = totals[n]
        expected = str(total)
        if previous is not None and total != previous:
            expected += f" ({'+' if total > previous else '-'}{abs(total - previous)})"
        assert cell["total"] == expected, (cell, run["parameters"])
        previous = total
    by = {row[3].split(" · ")[0] for row in rows}
    assert {"cli", "api", "ui", "schedule"} <= by, by
    # the chart: the totals over the runs, oldest first, the failure marked
    charts = {m["alt"]: m["data"] for m in IMAGE.finditer(markdown)}
    data = chart_data(base64.b64decode(charts[f"total over the last {len(runs)} runs"]).decode())
    statuses = [run["state"]["type"].lower() for run in reversed(runs)]
    assert data["status"] == statuses
    values = data["values"]
    assert isinstance(values, list)
    assert [v is None for v in values] == [s == "failed" for s in statuses]
    assert values[-1] == 140.0


def test_nbjobs_runs_json_lists_the_same(series: dict[str, Any]) -> None:
    runs, listed = series["runs"], series["json"]
    assert [r["id"] for r in listed] == [r["id"] for r in runs[: len(listed)]]
    assert len(listed) == min(len(runs), 20)
    assert listed[0]["outputs"]["total"] == 140 and listed[0]["trigger"] == "cli"
    failed = [r for r in listed if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"].startswith("cell 3: TypeError")
    assert failed[0]["outputs"] == {}


def test_a_run_from_the_ui_form_is_tagged_ui_and_keeps_its_typed_name(
    series: dict[str, Any],
) -> None:
    run = series["ui"]
    assert run["state"]["type"] == "COMPLETED"
    assert run["name"] == TYPED_NAME
    assert {"trigger:ui", f"notebook:{LABEL}", "nbjobs"} <= set(run["tags"])


def test_the_parameters_tab_and_the_summary_say_where_each_value_came_from(
    http_stack: HTTPStack, series: dict[str, Any]
) -> None:
    scheduled = series["scheduled"]
    # the Parameters tab: what the run was given, nothing else (no nulls, no falses)
    deployed = http_stack.api.request("GET", f"/deployments/name/run-notebook/{DEPLOYMENT}").json()[
        "parameters"
    ]
    assert scheduled["parameters"] == {
        "notebook": deployed["notebook"],  # the copy deploy stored
        "parameters": {"n": 10, "label": "weekly"},  # the deployment's (its form's) values
    }
    summary = http_stack.api.artifacts(scheduled["id"])[f"{LABEL.replace('_', '-')}-summary"]
    assert '| label | `"weekly"` | deployment |' in summary["data"]
    assert "| n | `10` | notebook default |" in summary["data"]
    # a command-line run: no nulls, no falses, no injection order
    cli = next(r for r in series["runs"] if "trigger:cli" in r["tags"])
    assert set(cli["parameters"]) <= {"notebook", "parameters", "cwd", "store"}, cli["parameters"]
    assert None not in cli["parameters"].values() and False not in cli["parameters"].values()
    # and the summary links the history
    assert "/v2/artifacts/key/history-report-history" in summary["data"]


def test_a_failure_is_one_line_in_the_header_and_one_error_in_the_log(
    http_stack: HTTPStack, series: dict[str, Any]
) -> None:
    failed = next(r for r in series["runs"] if r["state"]["type"] == "FAILED")
    message = failed["state"]["message"]
    assert message.startswith("cell 3: TypeError: "), message
    assert "Flow run encountered" not in message
    # the run page's header shows the state and the tags, not the message: a tag says it
    assert "failed: cell 3 TypeError" in failed["tags"]
    assert not [t for r in series["runs"] if r is not failed for t in r["tags"] if "failed" in t]
    logs = http_stack.api.logs(failed["id"])
    errors = [record["message"] for record in logs if record["level"] >= 40]
    assert len(errors) == 1, errors
    assert errors[0].startswith("cell 3: TypeError") and "cell 3, line " in errors[0]
    assert "In[" not in errors[0]  # numbered as everywhere else
    text = unquote(json.dumps(logs))
    assert str(series["notebook"].parent) not in text  # no paths of the machine that ran it
