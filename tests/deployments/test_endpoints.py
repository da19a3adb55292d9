"""Notebook endpoints through the real Jupyter Kernel Gateway, run and watched by Prefect.

Against the HTTP stack (a Prefect server with auth, ``nbjobs serve``): ``nbjobs
endpoints serve`` starts a ``serve-endpoints`` run whose gateway answers plain HTTP
clients on 127.0.0.1. A bare ``python -m kernel_gateway`` on the same notebook is
the oracle: each request gets the same status, type and body from both.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import psutil
import pytest

from notebook_jobs.tasks.models import summary_links
from tests.conftest import DATA, EXAMPLES
from tests.deployments.conftest import BIN, HTTPStack
from tests.processes import free_port

PASSWORD = "endpoints-test-password"
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/echo?x=2&x=3", {"json": {"a": [1, 2], "b": "c"}}),
    ("POST", "/echo", {"content": b"plain text", "headers": {"Content-Type": "text/plain"}}),
    ("GET", "/prices/pear?count=4", {}),
    ("GET", "/prices/kiwi", {}),  # 404 from its ResponseInfo cell
    ("POST", "/divide", {"json": {"a": 1, "b": 0}}),  # the cell raises: 500
    ("GET", "/no/such/path", {}),
]


def listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    except httpx.TransportError:
        return False
    return True


@pytest.fixture(scope="module")
def bare_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``jupyter kernelgateway`` as its users run it, on the example notebook: the oracle."""
    folder = tmp_path_factory.mktemp("bare-gateway")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kernel_gateway",
            "--KernelGatewayApp.api=kernel_gateway.notebook_http",
            f"--KernelGatewayApp.seed_uri={EXAMPLES / 'endpoints.ipynb'}",
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}",
        ],
        env={**_clean_env(), "JUPYTER_RUNTIME_DIR": str(folder)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not listening(port):
        assert process.poll() is None and time.monotonic() < deadline, (
            "the bare gateway did not start"
        )
        time.sleep(0.3)
    yield port
    process.terminate()
    process.wait(timeout=30)


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def save_secret(stack: HTTPStack, name: str, value: str) -> None:
    code = (
        "import sys\nfrom prefect.blocks.system import Secret\n"
        "Secret(value=sys.argv[2]).save(sys.argv[1], overwrite=True)\n"
    )
    done = subprocess.run(
        [str(BIN / "python"), "-c", code, name, value],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def gateway_processes(port: int) -> list[psutil.Process]:
    """The process listening on ``port`` and all it started (its kernels)."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            owner = psutil.Process(connection.pid)
            return [owner, *owner.children(recursive=True)]
    return []


def compared(response: httpx.Response) -> tuple[int, str, str]:
    """What a caller compares: status, content type, body."""
    return response.status_code, response.headers.get("content-type", ""), response.text


@pytest.mark.timeout(600)  # five nbjobs commands, each importing Prefect, on a busy machine
def test_served_authenticated_logged_restarted_and_stopped(
    http_stack: HTTPStack, bare_gateway: int, tmp_path: Path
) -> None:
    notebook = tmp_path / "endpoints.ipynb"
    shutil.copy(EXAMPLES / "endpoints.ipynb", notebook)
    save_secret(http_stack, "endpoints-password", PASSWORD)
    port = free_port()
    # with Kernel Gateway's own options passed through: a base URL, kernels started ahead
    done = http_stack.nbjobs(
        "endpoints", "serve", str(notebook), "--name", "demo", "--port", str(port),
        "--auth-secret", "endpoints-password", "--base-url", "/demo", "--prespawn", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    url = f"http://127.0.0.1:{port}/demo"
    assert f"demo: serving at {url}" in done.stdout
    with (
        httpx.Client(auth=("nbjobs", PASSWORD), timeout=60) as ours,
        httpx.Client(timeout=60) as bare,
    ):
        # the same answers as Kernel Gateway's own, request by request
        for method, path, extra in REQUESTS:
            mine = ours.request(method, url + path, **extra)
            theirs = bare.request(method, f"http://127.0.0.1:{bare_gateway}{path}", **extra)
            assert compared(mine) == compared(theirs), (method, path)
        assert ours.get(url + "/prices/pear?count=4").json() == {
            "item": "pear", "count": 4, "total": 3.0,
        }  # fmt: skip
        assert ours.get(url + "/prices/kiwi").status_code == 404
        assert ours.post(url + "/divide", json={"a": 1, "b": 0}).status_code == 500
        assert len(gateway_processes(port)) >= 3  # the gateway and its two kernels
        # the password, by basic auth or the gateway's token; nothing without it
        assert httpx.get(url + "/prices/pear").status_code == 401
        assert httpx.get(url + "/prices/pear", auth=("nbjobs", "wrong")).status_code == 401
        token = {"Authorization": f"token {PASSWORD}"}
        assert httpx.get(url + "/prices/pear", headers=token).status_code == 200
    # every request is in the run's log, the raising cell's error too
    run_id = _running_run(http_stack)
    expected = [
        "request POST /demo/echo?x=2&x=3 -> 200",
        "request GET /demo/prices/pear -> 401",
        "request POST /demo/divide -> 500",
    ]
    deadline = time.monotonic() + 30
    lines: list[str] = []
    while time.monotonic() < deadline and not all(any(e in m for m in lines) for e in expected):
        lines = [record["message"] for record in http_stack.api.logs(run_id)]
        time.sleep(1)
    for line in expected:
        assert any(line in m for m in lines), (line, lines[-20:])
    status = http_stack.nbjobs("endpoints", "status", "demo")
    assert f"demo: serving at {url} (run {run_id}" in status.stdout, status.stderr

    # restart picks up an edited notebook
    edited = nbformat.read(notebook, as_version=4)
    edited.cells[1].source = edited.cells[1].source.replace('"pear": 0.75', '"pear": 1.25')
    nbformat.write(edited, notebook)
    restarted = http_stack.nbjobs("endpoints", "restart", "demo")
    assert restarted.returncode == 0, restarted.stderr
    assert http_stack.api.flow_run(run_id)["state"]["type"] == "CANCELLED"
    answer = httpx.get(url + "/prices/pear?count=4", auth=("nbjobs", PASSWORD), timeout=60)
    assert answer.json()["total"] == 5.0

    # stop = cancel the run: the port closes and no process of the gateway is left
    started = gateway_processes(port)
    assert len(started) >= 2, started  # the gateway and its kernel
    stopped = http_stack.nbjobs("endpoints", "stop", "demo")
    assert stopped.returncode == 0 and "demo: stopped" in stopped.stdout, stopped.stderr
    assert not listening(port)
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, alive
    assert http_stack.nbjobs("endpoints", "stop", "demo").stdout.strip() == "demo: not running"


def _running_run(stack: HTTPStack) -> str:
    deployment = stack.api.deployment_id("serve-endpoints", "demo")
    found = stack.api.request(
        "POST",
        "/flow_runs/filter",
        json={
            "flow_runs": {
                "deployment_id": {"any_": [deployment]},
                "state": {"type": {"any_": ["RUNNING"]}},
            }
        },
    ).json()
    assert len(found) == 1, found
    return str(found[0]["id"])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--no-auth", "--name", "x"], "the notebook has no endpoint"),
        (["--name", "x"], "one of the arguments --auth-secret --no-auth is required"),
        (["--auth-secret", "no-such-block", "--name", "x"], "no Secret block 'no-such-block'"),
    ],
)
def test_bad_input_is_one_line(http_stack: HTTPStack, args: list[str], says: str) -> None:
    target = str(DATA / "trivial.ipynb" if "--no-auth" in args else EXAMPLES / "endpoints.ipynb")
    done = http_stack.nbjobs("endpoints", "serve", target, *args)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def call_job(stack: HTTPStack, slug: str, parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A run of ``endpoint/<slug>`` over Prefect's REST API, polled to its end."""
    deployment = stack.api.deployment_id("endpoint", slug)
    created = stack.api.request(
        "POST", f"/deployments/{deployment}/create_flow_run", json={"parameters": parameters}
    ).json()
    return created["id"], stack.api.wait(created["id"], timeout=180)


JOBS = [
    ("get-prices-item", {"path": {"item": "pear"}, "args": {"count": ["4"]}}, "GET", "/prices/pear?count=4", {}),
    ("get-prices-item", {"path": {"item": "kiwi"}}, "GET", "/prices/kiwi", {}),
    ("post-echo", {"body": {"a": [1, 2], "b": "c"}, "args": {"x": ["2", "3"]}}, "POST", "/echo?x=2&x=3", {"json": {"a": [1, 2], "b": "c"}}),
    ("post-divide", {"body": {"a": 1, "b": 0}}, "POST", "/divide", {"json": {"a": 1, "b": 0}}),
]  # fmt: skip


def test_each_endpoint_is_a_job_over_prefects_api(http_stack: HTTPStack, bare_gateway: int) -> None:
    done = http_stack.nbjobs("endpoints", "deploy", str(EXAMPLES / "endpoints.ipynb"))
    assert done.returncode == 0, done.stderr
    assert "endpoint/get-prices-item  GET /prices/:item" in done.stdout
    for slug, request, method, path, extra in JOBS:
        run_id, run = call_job(http_stack, slug, {"request": request})
        summary = http_stack.api.artifacts(run_id)[f"{slug}-response"]["data"]
        response = httpx.get(summary_links(summary)["response"], timeout=30).json()
        theirs = httpx.request(
            method, f"http://127.0.0.1:{bare_gateway}{path}", timeout=60, **extra
        )
        # what the gateway answers, from a run of its own with the notebook stored
        assert (response["status"], response["headers"]["Content-Type"], response["body"]) == (
            compared(theirs)
        ), slug
        expected = "FAILED" if theirs.status_code == 500 else "COMPLETED"
        assert run["state"]["type"] == expected, run["state"]
        notebook_run = summary_links(summary)["notebook"]
        executed = nbformat.reads(httpx.get(notebook_run, timeout=30).text, as_version=4)
        assert any("REQUEST = " in cell.source for cell in executed.cells)
    # the deployment's notebook is the one that runs: a caller cannot send another
    run_id, run = call_job(
        http_stack, "post-echo", {"request": {}, "notebook": str(DATA / "trivial.ipynb")}
    )
    assert run["state"]["type"] == "FAILED" and "is fixed by the deployment" in str(
        run["state"]["message"]
    )
