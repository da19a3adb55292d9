"""Helpers for tests and benchmarks that run servers as processes of their own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_prefect_server(
    port: int, env: dict[str, str], log: Path, *, auth_string: str | None = None
) -> subprocess.Popen[bytes]:
    """``prefect server start`` on 127.0.0.1:``port``, in its own session; once it answers.

    Waits with the product's own start-and-wait loop (``deployments/processes.py``).

    Raises:
        LocalServerError: It stopped while starting, or did not answer in time (the
            message names ``log``).
    """
    import httpx

    from notebook_jobs.deployments.api import auth_header
    from notebook_jobs.deployments.processes import wait_for

    prefect = Path(sys.executable).parent / "prefect"
    with log.open("ab") as output:
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api/health"

    def healthy() -> bool:
        try:
            return httpx.get(url, headers=auth_header(auth_string)).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, lambda: server.poll() is not None, "prefect server", log)
    except BaseException:
        stop(server)
        raise
    return server
