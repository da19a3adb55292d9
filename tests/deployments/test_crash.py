"""A worker killed mid-run: Prefect marks the run Crashed; running it again works and
the new attempt gets its own artefacts (the first attempt's are never overwritten)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from notebook_jobs.blocks.exceptions import APIError
from tests.conftest import DATA
from tests.deployments.conftest import BIN, ROOT, HTTPStack
from tests.deployments.test_http import artifacts
from tests.processes import stop

POOL = "crash-test"


def start_worker(stack: HTTPStack) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        [str(BIN / "nbjobs"), "serve", "--pool", POOL],
        env=stack.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            stack.api.deployment_id("run-notebook", f"adhoc-{POOL}")
            return worker
        except APIError:
            assert time.monotonic() < deadline, "nbjobs serve did not register its deployment"
            time.sleep(0.5)


def wait_for(stack: HTTPStack, run_id: str, states: set[str], timeout: float) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        run = stack.api.flow_run(run_id)
        if run["state"]["type"] in states:
            return run
        assert time.monotonic() < deadline, f"run still {run['state']['type']}"
        time.sleep(1)


@pytest.mark.timeout(600)
def test_a_killed_worker_leaves_a_crashed_run_that_runs_again_as_a_new_attempt(
    http_stack: HTTPStack,
) -> None:
    worker = start_worker(http_stack)
    try:
        run_id = http_stack.api.trigger(
            "run-notebook",
            f"adhoc-{POOL}",
            {"notebook": str(DATA / "sleeps.ipynb"), "parameters": {"seconds": 20}},
        )
        deadline = time.monotonic() + 60
        while "running cell 2" not in (
            (artifacts(http_stack, run_id).get("sleeps-progress") or {}).get("description") or ""
        ):
            assert time.monotonic() < deadline, "the run never reached its long cell"
            time.sleep(0.5)
        os.killpg(worker.pid, signal.SIGKILL)  # the worker, and the kernel it started, die at once
        worker.wait()
        crashed = wait_for(http_stack, run_id, {"CRASHED"}, timeout=180)
        assert "no heartbeat" in crashed["state"]["message"]

        again = httpx.post(
            f"{http_stack.api_url}/flow_runs/{run_id}/set_state",
            json={"state": {"type": "SCHEDULED", "message": "run it again"}, "force": True},
            headers=http_stack.headers(),
        )
        assert again.status_code in (200, 201), again.text
        worker = start_worker(http_stack)
        run = wait_for(http_stack, run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=180)
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert run["run_count"] == 2
        result = http_stack.api.result(run_id)
        assert (
            result["artefacts"]["prefix"]
            == f"s3://{http_stack.bucket}/runs/run-notebook/{run_id}/attempt-2"
        )
        assert result["outputs"] == {} and [c["status"] for c in result["cells"]] == ["ok"] * 4
    finally:
        stop(worker)
