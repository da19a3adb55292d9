"""``nbjobs deploy``: typed notebook deployments, schedules, pause and resume, over HTTP."""

from __future__ import annotations

import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import httpx

from notebook_jobs.deployments.definitions import content_hash, parameter_schema
from tests.conftest import DATA
from tests.deployments.conftest import BIN, ROOT, HTTPStack
from tests.deployments.test_http import trigger_and_wait


def test_parameter_schema_from_a_parameters_cell() -> None:
    declared = [
        {"name": "n", "type": "int", "default": "10", "help": "how many"},
        {"name": "when", "type": None, "default": "today()", "help": ""},
        {"name": "pair", "type": "tuple", "default": "(1, 2)", "help": ""},
    ]
    schema = parameter_schema(declared, {"n": 3})
    assert schema["additionalProperties"] is False
    assert schema["properties"]["n"] == {
        "title": "n",
        "position": 0,
        "type": "integer",
        "description": "how many",
        "default": 3,
    }
    assert schema["properties"]["when"] == {
        "title": "when",
        "position": 1,
    }  # computed default: not guessed
    assert schema["properties"]["pair"]["default"] == [1, 2]


def deployment(stack: HTTPStack, name: str) -> dict[str, Any]:
    response = httpx.get(
        f"{stack.api_url}/deployments/name/run-notebook/{name}", headers=stack.headers()
    )
    response.raise_for_status()
    return dict(response.json())


def runs_of(stack: HTTPStack, deployment_id: str, state: str | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200}
    if state:
        body["flow_runs"]["state"] = {"type": {"any_": [state]}}
    return list(
        httpx.post(f"{stack.api_url}/flow_runs/filter", json=body, headers=stack.headers()).json()
    )


def test_a_notebook_deployment_is_typed_and_the_server_enforces_it(http_stack: HTTPStack) -> None:
    done = http_stack.nbjobs(
        "deploy",
        str(DATA / "params.ipynb"),
        "--name",
        "typed",
        "-p",
        "name",
        "deployed",
        "--concurrency-limit",
        "2",
    )
    assert done.returncode == 0, done.stderr
    found = deployment(http_stack, "typed")
    digest = content_hash((DATA / "params.ipynb").read_bytes())
    assert found["version"] == digest and found["enforce_parameter_schema"] is True
    assert found["global_concurrency_limit"]["limit"] == 2
    properties = found["parameter_openapi_schema"]["properties"]["parameters"]["properties"]
    assert properties["x"] == {
        "title": "x",
        "position": 0,
        "type": "integer",
        "description": "a number",
        "default": 1,
    }
    assert properties["name"]["default"] == "deployed" and properties["config"]["type"] == "object"
    # the notebook is stored under its content hash, where any worker can fetch it
    # the deployment's (and every run's) Parameters tab shows what the notebook runs with
    assert found["parameters"]["parameters"] == {
        "x": 1,
        "name": "deployed",
        "ratio": 0.5,
        "flag": False,
        "items": [1, 2],
        "config": {"a": 1},
        "nothing": None,
    }
    notebook_uri = found["parameters"]["notebook"]
    assert notebook_uri == f"s3://{http_stack.bucket}/runs/notebooks/{digest}/params.ipynb"
    s3 = boto3.client("s3", endpoint_url=http_stack.env["AWS_ENDPOINT_URL_S3"])
    stored = s3.get_object(Bucket=http_stack.bucket, Key=f"runs/notebooks/{digest}/params.ipynb")[
        "Body"
    ].read()
    assert stored == (DATA / "params.ipynb").read_bytes()

    url = f"{http_stack.api_url}/deployments/{found['id']}/create_flow_run"
    before = len(runs_of(http_stack, found["id"]))
    unknown = httpx.post(
        url, json={"parameters": {"parameters": {"nope": 1}}}, headers=http_stack.headers()
    )
    assert unknown.status_code == 409 and "'nope' was unexpected" in unknown.text
    wrong = httpx.post(
        url, json={"parameters": {"parameters": {"x": "seven"}}}, headers=http_stack.headers()
    )
    assert wrong.status_code == 409 and "'seven' is not of type 'integer'" in wrong.text
    swapped = httpx.post(
        url, json={"parameters": {"notebook": "/etc/passwd"}}, headers=http_stack.headers()
    )
    assert swapped.status_code == 409
    assert len(runs_of(http_stack, found["id"])) == before  # refused before any run existed

    run_id, run, _ = trigger_and_wait(http_stack, "typed", {"parameters": {"x": 4}})
    assert run["state"]["type"] == "COMPLETED", run["state"]
    echo = http_stack.api.result(run_id)["outputs"]["echo"]
    assert (echo["x"], echo["name"]) == (
        4,
        "deployed",
    )  # run values over deployment defaults, per name
    assert {"notebook:params", "trigger:api", "nbjobs-notebook"} <= set(run["tags"])


def test_cron_schedule_with_a_timezone_pause_and_resume(http_stack: HTTPStack) -> None:
    done = http_stack.nbjobs(
        "deploy",
        str(DATA / "trivial.ipynb"),
        "--name",
        "nightly",
        "--cron",
        "30 3 * * *",
        "--timezone",
        "Europe/Berlin",
    )
    assert done.returncode == 0, done.stderr
    found = deployment(http_stack, "nightly")
    (schedule,) = found["schedules"]
    assert (
        schedule["schedule"]["cron"] == "30 3 * * *"
        and schedule["schedule"]["timezone"] == "Europe/Berlin"
    )

    def scheduled() -> list[dict[str, Any]]:
        return runs_of(http_stack, found["id"], "SCHEDULED")

    deadline = time.monotonic() + 60
    while not scheduled() and time.monotonic() < deadline:
        time.sleep(1)
    upcoming = scheduled()
    assert upcoming, "the server created no scheduled runs"
    for run in upcoming:
        local = datetime.fromisoformat(run["expected_start_time"]).astimezone(
            ZoneInfo("Europe/Berlin")
        )
        assert (local.hour, local.minute) == (3, 30) and "auto-scheduled" in run["tags"]

    schedule_url = f"{http_stack.api_url}/deployments/{found['id']}/schedules/{schedule['id']}"
    assert (
        httpx.patch(schedule_url, json={"active": False}, headers=http_stack.headers()).status_code
        == 204
    )
    deadline = time.monotonic() + 30
    while scheduled() and time.monotonic() < deadline:
        time.sleep(1)
    assert not scheduled(), "pausing the schedule left its scheduled runs"
    assert (
        httpx.patch(schedule_url, json={"active": True}, headers=http_stack.headers()).status_code
        == 204
    )
    deadline = time.monotonic() + 60
    while not scheduled() and time.monotonic() < deadline:
        time.sleep(1)
    assert scheduled(), "resuming the schedule created no runs"


def test_scheduled_runs_are_executed_by_nbjobs_serve(http_stack: HTTPStack) -> None:
    done = http_stack.nbjobs("deploy", str(DATA / "params.ipynb"), "--name", "every-few-seconds")
    assert done.returncode == 0, done.stderr
    found = deployment(http_stack, "every-few-seconds")
    added = httpx.post(
        f"{http_stack.api_url}/deployments/{found['id']}/schedules",
        json=[{"schedule": {"interval": 5}, "active": True}],
        headers=http_stack.headers(),
    )
    assert added.status_code == 201, added.text
    try:
        deadline = time.monotonic() + 150
        completed: list[dict[str, Any]] = []
        while len(completed) < 3 and time.monotonic() < deadline:
            completed = runs_of(http_stack, found["id"], "COMPLETED")
            time.sleep(1)
        assert len(completed) >= 3, f"{len(completed)} scheduled runs completed"
    finally:
        paused = httpx.post(
            f"{http_stack.api_url}/deployments/{found['id']}/pause_deployment",
            headers=http_stack.headers(),
        )
        assert paused.status_code in (200, 204), paused.text
    # three runs, three names, each readable: the notebook, its values, the run's id
    names = [run["name"] for run in completed]
    assert len(set(names)) == len(names), names
    for run in completed:
        # (the values in the order the server keeps them: PostgreSQL's JSONB sorts keys)
        assert run["name"].startswith("params ") and {"x=1", "name=world", "ratio=0.5"} <= set(
            run["name"].split()
        ), run["name"]
        assert run["name"].endswith(f" · {run['id'][-6:]}")
        assert {"nbjobs", "auto-scheduled", "trigger:schedule", "notebook:params"} <= set(
            run["tags"]
        )
    # the values it was given (its deployment's, which deploy saved from the notebook)
    # in its Parameters tab; in its summary, each said to be the notebook's default
    run = completed[0]
    assert run["parameters"]["parameters"]["name"] == "world"
    assert run["parameters"]["parameters"]["items"] == [1, 2]
    summary = http_stack.api.artifacts(run["id"])["params-summary"]["data"]
    assert '| name | `"world"` | notebook default |' in summary
    assert "| items | `[1, 2]` | notebook default |" in summary


def test_prefect_yaml_deploys_and_a_worker_gets_the_notebook_from_git(
    http_stack: HTTPStack,
) -> None:
    """`prefect deploy --all` from the repository root; the git deployment clones this repo."""
    env = {**http_stack.env, "NBJOBS_GIT_REPOSITORY": str(ROOT)}
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    from_git = deployment(http_stack, "report-from-git")
    assert from_git["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"] == str(
        ROOT
    )
    assert from_git["schedules"][0]["schedule"] == {
        "cron": "0 6 * * 1-5",
        "timezone": "Europe/Berlin",
        "day_or": True,
    }
    from_store = deployment(http_stack, "report-from-store")
    assert from_store["parameters"]["notebook"].startswith("s3://")

    run_id, run, _ = trigger_and_wait(http_stack, "report-from-git", {})
    assert run["state"]["type"] == "COMPLETED", run["state"]
    result = http_stack.api.result(run_id)
    assert result["outputs"] == {"total": 2870, "label": "weekday-report"}


def test_a_deployment_with_cache_reuses_its_completed_runs(http_stack: HTTPStack) -> None:
    """`nbjobs deploy --cache`: the second identical call over HTTP executes nothing."""
    name = f"cached-{uuid.uuid4().hex[:6]}"
    done = http_stack.nbjobs("deploy", str(DATA / "counts.ipynb"), "--name", name, "--cache")
    assert done.returncode == 0, done.stderr
    assert deployment(http_stack, name)["parameters"]["cache"] is True
    marker = f"/tmp/nbjobs-cached-{uuid.uuid4().hex}.txt"  # the worker is on this machine
    first_id, first, _ = trigger_and_wait(http_stack, name, {"parameters": {"marker": marker}})
    second_id, second, _ = trigger_and_wait(http_stack, name, {"parameters": {"marker": marker}})
    assert first["state"]["type"] == second["state"]["type"] == "COMPLETED"
    assert second["state"]["name"] == "Cached"
    result = http_stack.api.result(second_id)
    assert result["cached_from"] == first_id and result["cache"]["hit"] is True
    assert result["artefacts"]["html"] == http_stack.api.result(first_id)["artefacts"]["html"]
    assert Path(marker).read_text() == "ran\n"
    Path(marker).unlink()
