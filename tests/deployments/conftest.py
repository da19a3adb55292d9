"""A real Prefect server over HTTP, on PostgreSQL, with auth, and ``nbjobs serve``.

Session-wide: ``prefect server start`` on 127.0.0.1 backed by Debian's PostgreSQL
(``tests/services/postgres.sh`` installs and starts it), with
``PREFECT_SERVER_API_AUTH_STRING`` set; ``nbjobs serve`` as a second process runs the
deployments, storing artefacts in the S3 endpoint (moto over HTTP).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from notebook_jobs.blocks.exceptions import APIError, LocalServerError
from notebook_jobs.deployments.api import PrefectHTTP, auth_header
from notebook_jobs.deployments.processes import wait_for
from tests.conftest import service
from tests.processes import free_port, start_prefect_server, stop

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """An empty PostgreSQL database for the Prefect server (installed and started if needed)."""
    # a database of this session's own: two test sessions on one machine never share one
    return service("postgres.sh", "PostgreSQL", f"nbjobs_test_{os.getpid()}")


@dataclass
class HTTPStack:
    """The running server and worker, and what a test needs to talk to them."""

    api_url: str
    auth_string: str
    env: dict[str, str]  # for nbjobs subprocesses: server, auth, store
    bucket: str
    api: PrefectHTTP

    def headers(self) -> dict[str, str]:
        return auth_header(self.auth_string)

    def nbjobs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "nbjobs"), *args], env=self.env, capture_output=True, text=True, timeout=300
        )


@pytest.fixture(scope="session")
def http_stack(
    postgres_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HTTPStack]:
    import boto3

    home = tmp_path_factory.mktemp("prefect-http")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    auth_string = f"admin:{secrets.token_hex(12)}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    server_env = {
        **base_env,
        "PREFECT_HOME": str(home / "server"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres_url,
        "PREFECT_SERVER_API_AUTH_STRING": auth_string,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the scheduler looks for due schedules every 2 s (default 60 s) in tests
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        # a run its deployment's limit holds (--on-overlap queue) asks again every 2 s (30 s)
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
        "PREFECT_UI_ENABLED": "true",
    }
    try:
        server = start_prefect_server(
            port, server_env, home / "server.log", auth_string=auth_string
        )
    except LocalServerError as error:
        pytest.fail(f"{error}\n" + (home / "server.log").read_text()[-3000:])

    bucket = f"nbjobs-http-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    env = {
        **base_env,
        "PREFECT_HOME": str(home / "client"),
        "PREFECT_API_URL": api_url,
        "PREFECT_API_AUTH_STRING": auth_string,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "NBJOBS_HOME": str(home / "nbjobs"),
        "NBJOBS_STORE": f"s3://{bucket}/runs",
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        # runs whose heartbeats (every 30 s) stop for 45 s are marked Crashed
        "NBJOBS_ZOMBIE_SECONDS": "45",
    }
    worker_log = open(home / "serve.log", "wb")  # noqa: SIM115 - closed at teardown
    worker = subprocess.Popen(
        [str(BIN / "nbjobs"), "serve", "--limit", "4"],
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    api = PrefectHTTP(api_url, auth_string=auth_string)
    stack = HTTPStack(api_url, auth_string, env, bucket, api)

    def registered() -> bool:
        try:
            api.deployment_id("run-notebook", "adhoc")
        except APIError:
            return False
        return True

    try:
        wait_for(registered, lambda: worker.poll() is not None, "nbjobs serve", home / "serve.log")
    except LocalServerError as error:
        stop(worker)
        stop(server)
        pytest.fail(f"{error}\n" + (home / "serve.log").read_text()[-3000:])
    yield stack
    api.close()
    stop(worker)
    stop(server)
    worker_log.close()


# --- the local server: the embedded default ---------------------------------------

NBJOBS = str(Path(sys.executable).parent / "nbjobs")
RUN_TIMEOUT_SECONDS = 600  # a first start with both cores busy, on a slow machine


def clean_env(home: Path) -> dict[str, str]:
    """The user's environment with no Prefect server configured, and an empty home."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "NBJOBS_STORE", "NBJOBS_KERNEL"))
    }
    env.update(NBJOBS_HOME=str(home), PREFECT_HOME=str(home / "prefect-client"))
    return env


@dataclass
class Local:
    home: Path
    env: dict[str, str]

    def nbjobs(
        self, *args: str, timeout: float = RUN_TIMEOUT_SECONDS
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NBJOBS, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def status(self) -> dict[str, Any]:
        done = self.nbjobs("server", "status", "--json")
        assert done.returncode == 0, done.stderr
        status: dict[str, Any] = json.loads(done.stdout)
        return status

    def started(self) -> dict[str, Any]:
        """The status of the running server, started here if no earlier test did: a
        test that kills one of its processes never asks psutil for pid None, which is
        the test's own process."""
        done = self.nbjobs("server", "start")
        assert done.returncode == 0, done.stderr
        status = self.status()
        assert status["server_pid"] and status["worker_pid"], status
        return status

    def api(self) -> PrefectHTTP:
        """A client of the running local server, with its credentials."""
        status = self.status()
        return PrefectHTTP(status["api_url"], auth_string=status["login"])


@pytest.fixture(scope="session")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    """The embedded default as a user has it: started by the first ``nbjobs run``."""
    home = tmp_path_factory.mktemp("first-contact")
    found = Local(home, clean_env(home))
    yield found
    found.nbjobs("server", "stop", timeout=120)
