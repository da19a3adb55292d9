"""Session-wide real parts: one Prefect test server, one S3 endpoint over HTTP.

Both bind to 127.0.0.1. The S3 endpoint is moto's ``ThreadedMotoServer`` (a real
HTTP server, not an in-process mock) so that other processes, the kernel and the
``nbjobs`` subprocesses among them, reach it as they would reach MinIO.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import os
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.loop_guard import no_blocking_calls  # noqa: F401  (a fixture for every test folder)

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parent.parent / "examples"

# Fake credentials for moto; set before boto3 or Prefect are imported anywhere.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing-access-key",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
)
os.environ.pop("NBJOBS_STORE", None)


def invalid_notebooks(named: dict[str, bytes]) -> list[str]:
    """The stored notebooks among ``named`` (``.../notebook.ipynb``) that nbformat
    refuses, each with nbformat's reason."""
    import nbformat

    found = []
    for name, data in named.items():
        try:
            nbformat.validate(nbformat.reads(data.decode(), as_version=nbformat.NO_CONVERT))
        except Exception as error:
            found.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0]}")
    return found


@pytest.fixture(scope="session", autouse=True)
def every_stored_notebook_is_valid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the session: each executed notebook any test stored in a local store
    validates (the S3 ones are checked as the endpoint stops, in ``s3_endpoint``)."""
    yield
    stored = tmp_path_factory.getbasetemp().rglob("notebook.ipynb")
    invalid = invalid_notebooks({str(path): path.read_bytes() for path in stored})
    assert not invalid, "stored notebooks that are not valid:\n" + "\n".join(invalid)


@pytest.fixture(scope="session", autouse=True)
def nbjobs_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run folders and the default store live in a temporary home, not in ~."""
    home = tmp_path_factory.mktemp("nbjobs-home")
    os.environ["NBJOBS_HOME"] = str(home)
    yield home


@pytest.fixture(scope="session", autouse=True)
def local_executor() -> Iterator[Any]:
    """Flows run in this process go through one ``LocalExecutor``, as a worker's runs do.

    Its fork servers serve the whole session; it has no kernel pool, since a pool
    belongs to one event loop and each ``run_flow`` has its own.
    """
    from notebook_jobs.tasks.executors import LocalExecutor
    from notebook_jobs.tasks.runtime import using_executor

    executor = LocalExecutor()
    with using_executor(executor):
        yield executor
    asyncio.run(executor.close())


# How often the session's Prefect server is started before its failure is the test's.
HARNESS_STARTS = 3


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One Prefect server (SQLite, a subprocess on 127.0.0.1) for the whole session.

    Prefect's harness picks a free port, lets it go, and binds it again only once the
    app is built, seconds later. In that gap another test worker's kernel, dask
    scheduler or server can take the port; the harness then asks that stranger for
    ``/health``, is hung up on, and gives up (CI saw "Server disconnected without
    sending a response"). Such a start is stopped and tried again on a new port.
    """
    import httpx
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with contextlib.ExitStack() as harness:
        for start in range(1, HARNESS_STARTS + 1):
            try:
                harness.enter_context(prefect_test_harness(server_startup_timeout=60))
                break
            except httpx.HTTPError as error:
                # The failed start leaves its server registered as the default one.
                failed = SubprocessASGIServer._instances.pop(None, None)
                if failed is not None:
                    failed.stop()
                if start == HARNESS_STARTS:
                    raise
                warnings.warn(
                    f"the test Prefect server did not start ({error}); trying a new port",
                    stacklevel=1,
                )
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 over real HTTP on 127.0.0.1; boto3 finds it via AWS_ENDPOINT_URL_S3."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    yield endpoint
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    stored = {
        f"s3://{bucket['Name']}/{item['Key']}": s3.get_object(
            Bucket=bucket["Name"], Key=item["Key"]
        )["Body"].read()
        for bucket in s3.list_buckets()["Buckets"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"])
        for item in page.get("Contents", [])
        if item["Key"].endswith("/notebook.ipynb")
    }
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    server.stop()
    invalid = invalid_notebooks(stored)
    assert not invalid, "stored notebooks that are not valid:\n" + "\n".join(invalid)


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the S3 endpoint."""
    import boto3

    name = f"nbjobs-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    """A boto3 S3 client on the test endpoint, to look at what runs stored."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture(scope="session")
def http_notebooks() -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving tests/data (for http:// notebooks)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(DATA))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_flow(**parameters: Any) -> Any:
    """Run the run-notebook flow in this process and return its final state."""
    from notebook_jobs.flows.run_notebook import run_notebook

    return asyncio.run(run_notebook(**parameters, return_state=True))


def state_outcome(state: Any) -> Any:
    """The flow's return value, or the exception it ended with."""
    return state.result(raise_on_failure=False, _sync=True)


def service(script: str, what: str, *args: str) -> str:
    """Run a tests/services script; its last line of output is what it set up.

    Skipped with its reason where the machine cannot provide it (not root, no apt);
    in CI (``CI`` set) that is a failure instead, never a skip.
    """
    import subprocess

    path = Path(__file__).parent / "services" / script
    try:
        done = subprocess.run(
            ["bash", str(path), *args], capture_output=True, text=True, timeout=900, check=True
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        if os.environ.get("CI"):
            pytest.fail(f"tests/services/{script} failed in CI: {detail}")
        pytest.skip(f"{what} could not be set up on this machine (needs root and apt): {detail}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def slurm_partition() -> str:
    """A real single-node Slurm cluster (tests/services/slurm.sh); its partition."""
    return service("slurm.sh", "Slurm")


@pytest.fixture
def slurm_cluster(
    slurm_partition: str, prefect_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A saved SlurmCluster block on the real cluster; yields its name."""
    from notebook_jobs.blocks.slurm import SlurmCluster

    name = f"test-cluster-{uuid.uuid4().hex[:8]}"
    SlurmCluster(
        work_dir=str(tmp_path_factory.mktemp("slurm-shared")),
        partition=slurm_partition,
        poll_interval_seconds=0.3,
        max_poll_interval_seconds=2,
    ).save(name)
    yield name
