"""What a calling system does, with plain HTTP (httpx, no Prefect client).

Against ``prefect server start`` on PostgreSQL with an auth string, and the
deployments run by ``nbjobs serve``; artefacts go to S3 (moto over HTTP).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from typing import Any

import httpx
import nbformat

from notebook_jobs.tasks.models import summary_links
from tests.conftest import DATA, EXAMPLES
from tests.deployments.conftest import BIN, HTTPStack

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def trigger_and_wait(
    stack: HTTPStack, deployment: str, parameters: dict[str, Any]
) -> tuple[str, dict[str, Any], list[str]]:
    """Look the deployment up, create a run, poll it; return its id, final run and states seen."""
    headers = stack.headers()
    api = stack.api_url
    deployment_id = httpx.get(
        f"{api}/deployments/name/run-notebook/{deployment}", headers=headers
    ).json()["id"]
    created = httpx.post(
        f"{api}/deployments/{deployment_id}/create_flow_run",
        json={"parameters": parameters},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    seen: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}", headers=headers).json()
        state = run["state"]["type"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in FINAL:
            return run_id, run, seen
        time.sleep(0.25)
    raise AssertionError(f"run {run_id} did not finish: {seen}")


def artifacts(stack: HTTPStack, run_id: str) -> dict[str, Any]:
    found = httpx.post(
        f"{stack.api_url}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
        headers=stack.headers(),
    ).json()
    return {a["key"]: a for a in found}


def test_calls_without_the_auth_string_get_401(http_stack: HTTPStack) -> None:
    url = f"{http_stack.api_url}/deployments/name/run-notebook/adhoc"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, auth=("admin", "wrong")).status_code == 401
    assert httpx.get(url, headers=http_stack.headers()).status_code == 200


def test_the_blocks_catalog_lists_the_slurm_cluster(http_stack: HTTPStack) -> None:
    found = httpx.get(
        f"{http_stack.api_url}/block_types/slug/slurm-cluster", headers=http_stack.headers()
    )
    assert found.status_code == 200 and found.json()["name"] == "Slurm Cluster"


def test_trigger_with_parameters_then_fetch_notebook_and_result(http_stack: HTTPStack) -> None:
    run_id, run, seen = trigger_and_wait(
        http_stack,
        "adhoc",
        {"notebook": str(EXAMPLES / "report.ipynb"), "parameters": {"n": 5, "label": "http"}},
    )
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert seen[0] in {"SCHEDULED", "PENDING", "RUNNING"} and seen[-1] == "COMPLETED"
    assert run["name"] == f"report n=5 label=http · {run_id[-6:]}" and {
        "trigger:api",
        "nbjobs",
        "notebook:report",
    } <= set(run["tags"])
    found = artifacts(http_stack, run_id)
    result = httpx.get(summary_links(found["report-summary"]["data"])["result"]).json()
    assert result["success"] and result["outputs"] == {"total": 55, "label": "http"}
    assert result["artefacts"]["notebook"].startswith(
        f"s3://{http_stack.bucket}/runs/run-notebook/{run_id}/"
    )
    executed = nbformat.reads(
        httpx.get(summary_links(found["report-summary"]["data"])["notebook"]).text, as_version=4
    )
    assert executed.cells[2].metadata["tags"] == ["injected-parameters"]
    assert (
        "<html"
        in httpx.get(summary_links(found["report-summary"]["data"])["html"]).text[:300].lower()
    )


def test_a_run_from_the_ui_form_is_tagged_ui(http_stack: HTTPStack) -> None:
    # the request the UI's Run button sends (Prefect's UI bundle: createDeploymentFlowRun)
    api, headers = http_stack.api_url, http_stack.headers()
    deployment_id = http_stack.api.deployment_id("run-notebook", "adhoc")
    created = httpx.post(
        f"{api}/deployments/{deployment_id}/create_flow_run",
        json={
            "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"},
            "parameters": {"notebook": str(DATA / "trivial.ipynb")},
        },
        headers=headers,
    )
    assert created.status_code == 201, created.text
    run = http_stack.api.wait(created.json()["id"], timeout=180)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert {"nbjobs", "trigger:ui", "notebook:trivial"} <= set(run["tags"]), run["tags"]


def test_the_notebook_itself_sent_as_json(http_stack: HTTPStack) -> None:
    document = json.loads((DATA / "params.ipynb").read_text())
    document["metadata"]["name"] = "Weekly sales"
    run_id, run, _ = trigger_and_wait(
        http_stack, "adhoc", {"notebook": document, "parameters": {"x": 41}}
    )
    assert run["state"]["type"] == "COMPLETED", run["state"]
    result = http_stack.api.result(run_id)
    assert result["outputs"]["echo"]["x"] == 41
    # one name everywhere, from the notebook's metadata: run, tag, artifacts, result
    assert result["notebook"] == "Weekly-sales.ipynb"
    assert run["name"].startswith("Weekly-sales x=41") and "notebook:Weekly-sales" in run["tags"]
    assert {"weekly-sales-summary", "weekly-sales-outputs"} <= set(artifacts(http_stack, run_id))
    # the Parameters tab shows the stored copy, not the notebook's JSON, and the values
    # set (the notebook's own defaults are in the summary, each marked so)
    shown = http_stack.api.flow_run(run_id)["parameters"]
    assert shown["notebook"] == result["artefacts"]["input"]
    assert shown["notebook"].startswith(f"s3://{http_stack.bucket}/")
    assert shown["parameters"] == {"x": 41}
    assert (
        result["parameters_from"]["x"] == "run" and result["parameters_from"]["name"] == "notebook"
    )
    # or from the request's name field
    run_id, run, _ = trigger_and_wait(http_stack, "adhoc", {"notebook": document, "name": "daily"})
    assert run["name"].startswith("daily ") and "notebook:daily" in run["tags"]
    assert http_stack.api.result(run_id)["notebook"] == "daily.ipynb"


def test_a_failing_notebook_ends_failed_and_its_partial_notebook_is_fetchable(
    http_stack: HTTPStack,
) -> None:
    run_id, run, _ = trigger_and_wait(http_stack, "adhoc", {"notebook": str(DATA / "raises.ipynb")})
    assert run["state"]["type"] == "FAILED"
    assert "cell 3: ValueError: bad value 42" in run["state"]["message"]
    found = artifacts(http_stack, run_id)
    partial = nbformat.reads(
        httpx.get(summary_links(found["raises-summary"]["data"])["notebook"]).text, as_version=4
    )
    assert partial.cells[3].outputs[0]["text"] == "cell 2 ran\n"  # after the banner
    result = httpx.get(summary_links(found["raises-summary"]["data"])["result"]).json()
    assert (result["status"], result["error"]["cell_index"]) == ("failed", 3)


def test_bad_input_over_http_fails_before_any_kernel(http_stack: HTTPStack) -> None:
    run_id, run, _ = trigger_and_wait(
        http_stack,
        "adhoc",
        {
            "notebook": str(DATA / "params.ipynb"),
            "parameters": {"typo": 1},
            "strict_parameters": True,
        },
    )
    assert run["state"]["type"] == "FAILED"
    assert (
        "UnknownParameterError: unknown parameter(s) 'typo'; declared parameters: x"
        in run["state"]["message"]
    )
    # refused at staging: nothing ran, so none of the run's artifacts exist; its
    # notebook's history shows it, failed, with why
    published = artifacts(http_stack, run_id)
    assert [key for key in published if key] == ["params-history"]
    (row,) = [line for line in published["params-history"]["data"].splitlines() if run_id in line]
    assert "**failed**: UnknownParameterError: unknown parameter(s) 'typo'" in row


def test_an_urgent_run_goes_to_a_higher_priority_work_queue(http_stack: HTTPStack) -> None:
    done = subprocess.run(
        [
            str(BIN / "prefect"),
            "work-queue",
            "create",
            "urgent",
            "--pool",
            "notebook-jobs",
            "--priority",
            "1",
        ],
        env=http_stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 or "already exists" in done.stdout + done.stderr, (
        done.stdout + done.stderr
    )
    run_id = http_stack.api.trigger(
        "run-notebook", "adhoc", {"notebook": str(DATA / "trivial.ipynb")}, work_queue_name="urgent"
    )
    run = http_stack.api.wait(run_id)
    assert run["state"]["type"] == "COMPLETED" and run["work_queue_name"] == "urgent"
    queues = httpx.post(
        f"{http_stack.api_url}/work_pools/notebook-jobs/queues/filter", headers=http_stack.headers()
    ).json()
    priority = {q["name"]: q["priority"] for q in queues}
    assert priority["urgent"] < priority["default"]


def test_cancelling_a_run_through_the_api_stops_its_kernel_and_keeps_the_partial_notebook(
    http_stack: HTTPStack,
) -> None:
    api = http_stack.api
    run_id = api.trigger(
        "run-notebook",
        "adhoc",
        {"notebook": str(DATA / "sleeps.ipynb"), "parameters": {"seconds": 600}},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the long cell is running
        progress = artifacts(http_stack, run_id).get("sleeps-progress")
        if progress and "running cell 2" in (progress.get("description") or ""):
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the run never reached its long cell")
    cancel = httpx.post(
        f"{http_stack.api_url}/flow_runs/{run_id}/set_state",
        json={"state": {"type": "CANCELLING", "message": "stop it"}, "force": True},
        headers=http_stack.headers(),
    )
    assert cancel.status_code in (200, 201), cancel.text
    asked = time.monotonic()
    run = api.wait(run_id, timeout=60)
    assert run["state"]["type"] == "CANCELLED", run["state"]
    assert (
        time.monotonic() - asked < 10
    )  # the worker polls the state each second; the kernel stops at once
    assert "cancelled while running cell 2" in run["state"]["message"]
    found = artifacts(http_stack, run_id)
    partial = nbformat.reads(
        httpx.get(summary_links(found["sleeps-summary"]["data"])["notebook"]).text, as_version=4
    )
    assert partial.cells[2].outputs[0]["text"] == "started\n"
    result = httpx.get(summary_links(found["sleeps-summary"]["data"])["result"]).json()
    assert result["status"] == "cancelled" and result["cells"][2]["status"] == "cancelled"


def test_a_secret_parameter_over_http_is_nowhere_but_in_the_kernel(
    http_stack: HTTPStack, s3: Any
) -> None:
    """A deployed notebook that declares ``# secret``, run with ``{"$secret": block}``."""
    value = f"http-secret-{uuid.uuid4().hex}"
    block = f"warehouse-{uuid.uuid4().hex[:8]}"
    saved = subprocess.run(
        [
            str(BIN / "python"),
            "-c",
            "import sys; from prefect.blocks.system import Secret; "
            "Secret(value=sys.stdin.read()).save(sys.argv[1])",
            block,
        ],
        input=value,
        env=http_stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert saved.returncode == 0, saved.stderr
    name = f"secret-{uuid.uuid4().hex[:6]}"
    deployed = http_stack.nbjobs("deploy", str(DATA / "secret.ipynb"), "--name", name)
    assert deployed.returncode == 0, deployed.stderr
    deployment = http_stack.api.request("GET", f"/deployments/name/run-notebook/{name}").json()
    schema = deployment["parameter_openapi_schema"]["properties"]["parameters"]
    assert schema["properties"]["password"]["required"] == ["$secret"]
    run_id, run, _ = trigger_and_wait(
        http_stack, name, {"parameters": {"password": {"$secret": block}, "fail": True}}
    )
    assert run["state"]["type"] == "FAILED"
    result = http_stack.api.result(run_id)
    assert result["outputs"]["length"] == len(value)
    listed = s3.list_objects_v2(Bucket=http_stack.bucket, Prefix=f"runs/run-notebook/{run_id}/")
    stored = [
        s3.get_object(Bucket=http_stack.bucket, Key=o["Key"])["Body"]
        .read()
        .decode(errors="replace")
        for o in listed["Contents"]
    ]
    deadline = time.monotonic() + 60  # the worker ships its logs every few seconds
    while "the partial notebook is stored" not in json.dumps(logs := http_stack.api.logs(run_id)):
        assert time.monotonic() < deadline, logs
        time.sleep(0.5)
    shown = [
        json.dumps(http_stack.api.flow_run(run_id)),
        json.dumps(logs),
        json.dumps(artifacts(http_stack, run_id)),
        json.dumps(result),
    ]
    assert len(stored) >= 5 and "cell 2 stdout" in shown[1]
    assert [text for text in stored + shown if value in text] == []
    assert {"password": {"$secret": block}}.items() <= run["parameters"]["parameters"].items()
