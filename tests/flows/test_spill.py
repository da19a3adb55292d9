"""The store goes away mid-run: the artefacts are kept locally and uploaded later."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from notebook_jobs.blocks.exceptions import ArtefactStoreError
from tests.conftest import DATA, run_flow, state_outcome

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("no_blocking_calls")
def test_an_unreachable_store_spills_and_retry_uploads_completes(
    prefect_server: str, nbjobs_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # fail fast once the endpoint is gone
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="flaky")

    def stop_soon() -> None:
        time.sleep(3)  # the kernel is running the notebook's long cell by then
        server.stop()

    threading.Thread(target=stop_soon, daemon=True).start()
    state = run_flow(
        notebook=str(DATA / "sleeps.ipynb"), parameters={"seconds": 6}, store="s3://flaky/runs"
    )
    assert state.is_failed()
    error = state_outcome(state)
    assert isinstance(error, ArtefactStoreError)
    assert "could not be reached" in state.message and "nbjobs retry-uploads" in state.message
    result = error.result or {}
    assert result["status"] == "completed"  # the notebook itself ran fine
    spill = Path(result["artefacts"]["prefix"])
    assert spill.is_relative_to(nbjobs_home / "spill")
    assert json.loads((spill / "result.json").read_text())["outputs"] == result["outputs"]
    assert (spill / "notebook.ipynb").exists() and (spill / "notebook.html").exists()

    # the store is back (same port, same in-memory buckets): upload what was kept
    again = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    again.start()
    try:
        env = {**os.environ, "AWS_ENDPOINT_URL_S3": endpoint, "PREFECT_API_URL": prefect_server}
        done = subprocess.run(
            [str(Path(sys.executable).parent / "nbjobs"), "retry-uploads"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "uploaded" in done.stdout
        key = f"runs/run-notebook/{result['flow_run_id']}"
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="flaky", Prefix=key)["Contents"]}
        assert {
            f"{key}/notebook.ipynb",
            f"{key}/notebook.html",
            f"{key}/input.ipynb",
            f"{key}/result.json",
        } <= keys
        stored = json.loads(s3.get_object(Bucket="flaky", Key=f"{key}/result.json")["Body"].read())
        assert stored["artefacts"]["notebook"] == f"s3://flaky/{key}/notebook.ipynb"
        assert "artefacts uploaded later by nbjobs retry-uploads" in stored["notes"]
        assert not spill.exists()
    finally:
        again.stop()
