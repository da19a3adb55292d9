"""What a caller of a deployment can reach is what the deployer chose, tried as an attacker.

Over plain HTTP against the session's real server (PostgreSQL, basic auth) and
``nbjobs serve``. Each attack is refused with HTTP 409 before any run exists, or
by a run that fails before any kernel starts; then the store and the worker's
filesystem are searched for anything it left.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from notebook_jobs.deployments.commands import adhoc_decision
from notebook_jobs.deployments.definitions import ENTRYPOINT, flow_schema
from tests.conftest import DATA
from tests.deployments.conftest import BIN, ROOT, HTTPStack
from tests.deployments.test_deploy import deployment, runs_of
from tests.deployments.test_http import trigger_and_wait
from tests.processes import stop


def code_carrying_name(marker: Path) -> str:
    """A parameter name that, written into the notebook as ``name = value``, runs code."""
    return f'x = 1\nopen("{marker}", "w").close()\ny'


def create_run(stack: HTTPStack, deployment_id: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{stack.api_url}/deployments/{deployment_id}/create_flow_run",
        json=body,
        headers=stack.headers(),
    )


def wait_final(stack: HTTPStack, run_id: str) -> dict[str, Any]:
    return stack.api.wait(run_id, timeout=180)


def stored_keys(stack: HTTPStack) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL_S3"])
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def worker_files(stack: HTTPStack) -> list[Path]:
    return [path for path in Path(stack.env["NBJOBS_HOME"]).rglob("*") if path.is_file()]


def test_a_typed_deployment_fixes_every_technical_parameter(
    http_stack: HTTPStack, tmp_path: Path
) -> None:
    done = http_stack.nbjobs(
        "deploy", str(DATA / "params.ipynb"), "--name", "locked", "--allow", "timeout_seconds"
    )
    assert done.returncode == 0, done.stderr
    found = deployment(http_stack, "locked")
    # what the UI's run form shows: the notebook's parameters and the opened one
    assert list(found["parameter_openapi_schema"]["properties"]) == [
        "parameters",
        "timeout_seconds",
    ]
    assert "nbjobs-allow:timeout_seconds" in found["tags"]
    before = len(runs_of(http_stack, found["id"]))
    stolen = tmp_path / "stolen"
    marker = tmp_path / "pwned"
    attacks = {
        "store": {"store": str(stolen)},
        "other bucket": {"store": "s3://someone-elses-bucket/runs"},
        "input_files": {"input_files": ["/etc/hostname"]},
        "kernel": {"kernel": "python3"},
        "cluster": {"cluster": "hpc"},
        "cwd": {"cwd": "/root"},
        "notebook": {"notebook": str(DATA / "raises.ipynb")},
        "code in a name": {"parameters": {code_carrying_name(marker): 1}},
    }
    for what, parameters in attacks.items():
        refused = create_run(http_stack, found["id"], {"parameters": parameters})
        assert refused.status_code == 409, (what, refused.text)
    assert len(runs_of(http_stack, found["id"])) == before  # refused before any run existed

    # the schema is not the wall: a caller may switch its enforcement off for a run
    bypass = create_run(
        http_stack,
        found["id"],
        {"parameters": {"store": str(stolen)}, "enforce_parameter_schema": False},
    )
    assert bypass.status_code == 201, bypass.text
    run = wait_final(http_stack, bypass.json()["id"])
    assert run["state"]["type"] == "FAILED"
    assert (
        "FixedParameterError: 'store' is fixed by the deployment 'locked'"
        in (run["state"]["message"])
    )

    # the opened parameter and the notebook's own still work
    run_id, run, _ = trigger_and_wait(
        http_stack, "locked", {"parameters": {"x": 3}, "timeout_seconds": 120}
    )
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert http_stack.api.result(run_id)["outputs"]["echo"]["x"] == 3

    assert not stolen.exists() and not marker.exists()
    assert not [key for key in stored_keys(http_stack) if key.endswith("hostname")]
    assert not [path for path in worker_files(http_stack) if path.name == "hostname"]


def make_yaml_style_deployment(stack: HTTPStack, name: str, tags: list[str]) -> str:
    """A deployment as ``prefect deploy`` makes one from prefect.yaml: the flow's whole
    signature as its schema, a fixed notebook in its parameters."""
    flow = stack.api.request("POST", "/flows/", json={"name": "run-notebook"}).json()
    made = stack.api.request(
        "POST",
        "/deployments/",
        json={
            "name": name,
            "flow_id": flow["id"],
            "work_pool_name": "notebook-jobs",
            "entrypoint": ENTRYPOINT,
            "parameters": {"notebook": str(DATA / "params.ipynb")},
            "parameter_openapi_schema": flow_schema(),
            "enforce_parameter_schema": True,
            "tags": tags,
        },
    ).json()
    return str(made["id"])


def test_a_prefect_yaml_deployment_is_held_to_its_notebook_at_run_time(
    http_stack: HTTPStack, tmp_path: Path
) -> None:
    deployment_id = make_yaml_style_deployment(
        http_stack, "from-yaml", ["nbjobs", "nbjobs-allow:timeout_seconds"]
    )
    stolen = tmp_path / "stolen"
    marker = tmp_path / "pwned"
    for parameters, refused in (
        ({"store": str(stolen)}, "FixedParameterError: 'store' is fixed"),
        ({"input_files": ["/etc/hostname"]}, "FixedParameterError: 'input_files' is fixed"),
        ({"notebook": str(DATA / "raises.ipynb")}, "FixedParameterError: 'notebook' is fixed"),
        ({"parameters": {code_carrying_name(marker): 1}}, "ParameterValueError"),
    ):
        created = create_run(http_stack, deployment_id, {"parameters": parameters})
        assert created.status_code == 201, created.text  # its schema lets them through...
        run = wait_final(http_stack, created.json()["id"])
        assert run["state"]["type"] == "FAILED"  # ...and the run refuses them
        assert refused in run["state"]["message"], run["state"]["message"]

    opened = create_run(http_stack, deployment_id, {"parameters": {"timeout_seconds": 120}})
    assert wait_final(http_stack, opened.json()["id"])["state"]["type"] == "COMPLETED"
    assert not stolen.exists() and not marker.exists()
    assert not [path for path in worker_files(http_stack) if path.name == "hostname"]


def test_code_in_a_parameter_name_is_refused_by_adhoc_a_batch_and_the_cli(
    http_stack: HTTPStack, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    name = code_carrying_name(marker)
    # adhoc over HTTP
    _, run, _ = trigger_and_wait(
        http_stack, "adhoc", {"notebook": str(DATA / "params.ipynb"), "parameters": {name: 1}}
    )
    assert run["state"]["type"] == "FAILED"
    assert "ParameterValueError" in run["state"]["message"]

    # a batch, run by the worker as a deployment of run-notebooks
    flow = http_stack.api.request("POST", "/flows/", json={"name": "run-notebooks"}).json()
    batch = http_stack.api.request(
        "POST",
        "/deployments/",
        json={
            "name": "least-privilege-batch",
            "flow_id": flow["id"],
            "work_pool_name": "notebook-jobs",
            "entrypoint": "flows/run_notebooks.py:run_notebooks",
            "path": str(ROOT),
        },
    ).json()
    created = create_run(
        http_stack,
        batch["id"],
        {
            "parameters": {
                "requests": [
                    {"notebook": str(DATA / "params.ipynb"), "parameters": {name: 1}},
                    {"notebook": str(DATA / "params.ipynb"), "parameters": {"x": 2}},
                ]
            }
        },
    )
    assert created.status_code == 201, created.text
    run = wait_final(http_stack, created.json()["id"])
    assert run["state"]["type"] == "FAILED", run["state"]["message"]
    assert "1 of 2 notebooks failed: #0 ParameterValueError" in run["state"]["message"], run[
        "state"
    ]["message"]

    # the command line, papermill's -p
    done = subprocess.run(
        [
            str(BIN / "nbjobs"),
            "run",
            str(DATA / "params.ipynb"),
            str(tmp_path / "out.ipynb"),
            "-p",
            name,
            "1",
        ],
        env=http_stack.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is not a valid parameter name" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_oversized_requests_are_refused_before_any_kernel_starts(
    http_stack: HTTPStack, tmp_path: Path
) -> None:
    big = tmp_path / "big.ipynb"
    head, tail = b'{"cells": [], "metadata": {}, "padding": "', b'"}'
    # one byte over the default limit of 50 MB
    big.write_bytes(head + b"x" * (50_000_001 - len(head) - len(tail)) + tail)
    assert big.stat().st_size == 50_000_001
    for parameters, refused in (
        ({"notebook": str(big)}, "RequestTooLargeError: the notebook"),
        (
            {
                "notebook": str(DATA / "params.ipynb"),
                "parameters": {f"p{i}": i for i in range(1001)},
            },
            "RequestTooLargeError: the request's parameters is 1,001 names",
        ),
    ):
        run_id, run, _ = trigger_and_wait(http_stack, "adhoc", parameters)
        assert run["state"]["type"] == "FAILED"
        assert refused in run["state"]["message"], run["state"]["message"]
        # refused at staging: nothing ran; only its notebook's history shows it, failed
        assert [
            key for key in http_stack.api.artifacts(run_id) if not key.endswith("-history")
        ] == []

    # Prefect's own API refuses parameters over 512 KiB before any run exists, so a
    # notebook or parameters that large only reach a worker from the command line
    adhoc = http_stack.api.deployment_id("run-notebook", "adhoc")
    huge = create_run(
        http_stack,
        adhoc,
        {
            "parameters": {
                "notebook": str(DATA / "params.ipynb"),
                "parameters": {"x": "y" * 600_000},
            }
        },
    )
    assert huge.status_code == 422
    assert "must be less than 524,288 bytes" in huge.text[:2000]


@pytest.mark.parametrize(
    ("url", "auth", "asked", "served"),
    [
        ("http://127.0.0.1:4200/api", False, None, True),
        ("http://localhost:4200/api", False, None, True),
        ("http://10.0.0.5:4200/api", False, None, False),
        ("http://10.0.0.5:4200/api", True, None, True),
        ("https://api.prefect.cloud/api/accounts/a/workspaces/w", True, None, True),
        ("http://10.0.0.5:4200/api", False, True, True),
        ("http://127.0.0.1:4200/api", True, False, False),
    ],
)
def test_adhoc_is_served_only_where_it_is_safe_or_asked_for(
    url: str, auth: bool, asked: bool | None, served: bool
) -> None:
    assert adhoc_decision(url, auth, asked)[0] is served


def test_no_adhoc_leaves_it_out_and_removes_an_earlier_one(http_stack: HTTPStack) -> None:
    # the session's worker (loopback, with auth) registered run-notebook/adhoc; another
    # pool gets one as an earlier `serve` would have left it, then `serve --no-adhoc`
    pool = f"lp-{uuid.uuid4().hex[:6]}"
    url = f"{http_stack.api_url}/deployments/name/run-notebook/adhoc-{pool}"
    flow = http_stack.api.request("POST", "/flows/", json={"name": "run-notebook"}).json()
    http_stack.api.request("POST", "/work_pools/", json={"name": pool, "type": "process"})
    http_stack.api.request(
        "POST",
        "/deployments/",
        json={
            "name": f"adhoc-{pool}",
            "flow_id": flow["id"],
            "work_pool_name": pool,
            "entrypoint": ENTRYPOINT,
        },
    )
    assert httpx.get(url, headers=http_stack.headers()).status_code == 200
    worker = subprocess.Popen(
        [str(BIN / "nbjobs"), "serve", "--pool", pool, "--kernel-pool", "0", "--no-adhoc"],
        env=http_stack.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while httpx.get(url, headers=http_stack.headers()).status_code != 404:
            assert worker.poll() is None, "nbjobs serve --no-adhoc exited"
            assert time.monotonic() < deadline, "adhoc was not removed"
            time.sleep(0.5)
    finally:
        stop(worker)
