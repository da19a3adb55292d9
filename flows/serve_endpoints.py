"""The ``serve-endpoints`` flow: a notebook's annotated cells served as an HTTP API by
Jupyter Kernel Gateway, for as long as the flow run runs.

Starting the API is a run of the notebook's deployment, which stays Running while the
gateway serves; stopping it is cancelling the run (the gateway and its kernels stop
with it); restarting is a new run, which reads the notebook again. The gateway's log,
one line per request (status, method, path, milliseconds), streams into the run's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.blocks.system import Secret
from prefect.runtime import flow_run

from notebook_jobs.blocks.exceptions import EndpointServerError, NotebookInputError
from notebook_jobs.blocks.settings import settings
from notebook_jobs.tasks.engine.endpoints import Endpoint, find_endpoints
from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
from notebook_jobs.tasks.engine.gateway import (
    DEFAULT_USER,
    PASSWORD_ENV,
    USER_ENV,
    gateway_command,
)
from notebook_jobs.tasks.engine.kernels.client import kernel_environment

FLOW_NAME = "serve-endpoints"
DEFAULT_PORT = 8890
LISTEN_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
OUTPUT_LINES_KEPT = 40
REQUEST_LOG_SECONDS = 1.0  # requests are logged together at most this often
# tornado's access log: "[I 261203 17:19:22 web:2591] 200 POST /echo?x=2 (127.0.0.1) 32.70ms"
_ACCESS = re.compile(r"^\[([IWE]) [^]]* web:\d+\] (\d{3}) (\S+) (\S+) \(([^)]*)\) ([\d.]+ms)")


@flow(name=FLOW_NAME, log_prints=True)
async def run_endpoints(
    notebook: str,
    port: int = DEFAULT_PORT,
    ip: str = "127.0.0.1",
    auth_secret: str | None = None,
    no_auth: bool = False,
    user: str = DEFAULT_USER,
    prespawn_count: int | None = None,
    allow_origin: str | None = None,
    base_url: str | None = None,
    kernel: str | None = None,
) -> None:
    """Serve ``notebook``'s endpoints with Jupyter Kernel Gateway until cancelled.

    Args:
        notebook: A path, ``s3://`` URI or ``http(s)://`` URL of a notebook with cells
            annotated ``# METHOD /path``.
        port: The port the gateway listens on.
        ip: The address it binds (127.0.0.1: this machine only).
        auth_secret: A Prefect ``Secret`` block holding the password: requests need
            HTTP basic auth (``user`` and it) or ``Authorization: token <it>``.
        no_auth: Serve without auth (an explicit choice: one of the two is required).
        user: The basic-auth user name.
        prespawn_count: Kernels the gateway starts ahead (Kernel Gateway's own option).
        allow_origin: The CORS ``Access-Control-Allow-Origin`` value.
        base_url: A path prefix for every endpoint.
        kernel: The kernel to use instead of the notebook's own.

    Raises:
        NotebookInputError: The notebook has no endpoint, a malformed annotation,
            two cells on one route, or neither ``auth_secret`` nor ``no_auth``.
        EndpointServerError: The gateway did not listen, or stopped by itself.
    """
    logger = get_run_logger()
    if not auth_secret and not no_auth:
        raise NotebookInputError(
            "give auth_secret (the name of a Prefect Secret block holding the password) or, "
            "to serve without auth, no_auth=true"
        )
    source = await asyncio.to_thread(fetch_notebook_source, notebook)
    parsed = await asyncio.to_thread(parse_notebook, source)
    endpoints = find_endpoints(parsed)
    # the kernels' environment, as for any run's kernel, less all of Prefect's settings
    env = {k: v for k, v in kernel_environment().items() if not k.startswith("PREFECT_")}
    if auth_secret:
        secret: Secret[str] = await Secret.aload(auth_secret)
        env[PASSWORD_ENV] = str(secret.get())
        env[USER_ENV] = user
    folder = settings().home / "endpoints" / (flow_run.get_id() or f"local-{os.getpid()}")
    seed = folder / source.name
    await asyncio.to_thread(_write_seed, parsed, seed)
    env["JUPYTER_RUNTIME_DIR"] = str(folder / "runtime")
    command = gateway_command(
        seed,
        ip=ip,
        port=port,
        prespawn_count=prespawn_count,
        allow_origin=allow_origin,
        base_url=base_url,
        kernel=kernel,
    )
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=str(seed.parent),
        # in the worker's process group: whatever stops the worker's group stops it too
    )
    recent: list[str] = []
    pump = asyncio.ensure_future(_pump(process, logger, recent))
    try:
        await _wait_listening(process, ip, port, recent)
        url = f"http://{ip}:{port}{(base_url or '').rstrip('/')}"
        routes = ", ".join(endpoint.route for endpoint in endpoints)
        logger.info(
            "serving %d endpoints of %s at %s (%s): %s",
            len(endpoints),
            source.name,
            url,
            f"basic auth, user {user}" if auth_secret else "no auth",
            routes,
        )
        await acreate_markdown_artifact(
            _summary(source.name, url, endpoints, user if auth_secret else None),
            key=f"{_slug(source.name)}-endpoints",
            description=f"{source.name} served at {url}",
        )
        code = await process.wait()
        await asyncio.wait_for(asyncio.shield(pump), timeout=5)
        raise EndpointServerError(
            f"the gateway serving {source.name} stopped by itself (exit code {code})",
            output="\n".join(recent),
        )
    finally:
        await asyncio.shield(asyncio.to_thread(_stop, process.pid))
        pump.cancel()
        await asyncio.to_thread(shutil.rmtree, folder, True)


def _write_seed(notebook: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


async def _pump(process: asyncio.subprocess.Process, logger: Any, recent: list[str]) -> None:
    """Stream the gateway's output into the run's log: its own lines one by one, and the
    requests (``POST /echo -> 200 in 3.1ms``) one line each, gathered into one record
    per ``REQUEST_LOG_SECONDS`` (a record per request cost the served API 5 to 8 % of
    its throughput on 2 cores, in the worker and the Prefect server's log inserts)."""
    assert process.stdout is not None
    requests: list[str] = []
    failed = False
    flushed = time.monotonic()

    def flush() -> None:
        nonlocal failed, flushed
        if requests:
            logger.log(30 if failed else 20, "%s", "\n".join(requests))
            requests.clear()
        failed, flushed = False, time.monotonic()

    while True:
        try:
            raw = await asyncio.wait_for(process.stdout.readline(), timeout=REQUEST_LOG_SECONDS)
        except TimeoutError:
            flush()
            continue
        if not raw:
            flush()
            return
        line = raw.decode(errors="replace").rstrip()
        if not line:
            continue
        recent.append(line)
        del recent[:-OUTPUT_LINES_KEPT]
        request = _ACCESS.match(line)
        if request:
            _, status, method, path, _client, took = request.groups()
            requests.append(f"request {method} {path} -> {status} in {took}")
            failed = failed or status.startswith(("4", "5"))
        elif "Kernel is running over TCP without encryption" not in line:
            flush()
            logger.info("gateway: %s", line)
        if time.monotonic() - flushed >= REQUEST_LOG_SECONDS:
            flush()


async def _wait_listening(
    process: asyncio.subprocess.Process, ip: str, port: int, recent: list[str]
) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise EndpointServerError(
                f"the gateway stopped while starting (exit code {process.returncode}): "
                + (recent[-1] if recent else "no output"),
                output="\n".join(recent),
            )
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=1):
            return
        await asyncio.sleep(0.2)
    raise EndpointServerError(
        f"the gateway did not listen on {ip}:{port} within {LISTEN_TIMEOUT_SECONDS:.0f} s",
        output="\n".join(recent),
    )


def _stop(pid: int) -> None:
    """Stop the gateway (it shuts its kernels down), then whatever of it is left."""
    try:
        gateway = psutil.Process(pid)
        started = [gateway, *gateway.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        gateway.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(started, timeout=STOP_GRACE_SECONDS)
    for process in alive:  # ours: the gateway and the kernels it started
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removesuffix(".ipynb")).strip("-") or "notebook"


def _summary(name: str, url: str, endpoints: list[Endpoint], user: str | None) -> str:
    auth = f"-u {user}:$PASSWORD " if user else ""
    lines = [f"# {name}: serving at {url}", "", "| method | path | cell |", "|---|---|---:|"]
    lines += [f"| {e.method} | `{e.path}` | {e.cell} |" for e in endpoints]
    lines += ["", "```bash"]
    for endpoint in endpoints:
        path = re.sub(r":(\w+)", r"\1", endpoint.path)
        data = " -d '{}'" if endpoint.method in ("POST", "PUT") else ""
        lines.append(f"curl {auth}-X {endpoint.method}{data} {url}{path}")
    lines += [
        "```",
        "",
        "Cancel this flow run to stop the API; run the deployment again to restart it.",
    ]
    return "\n".join(lines)
