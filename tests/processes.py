"""Helpers for tests and benchmarks that run servers as processes of their own."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

# Below Linux's ephemeral range (32768-60999), where every bind to port 0 lands: the
# kernels, dask schedulers and moto servers of other tests never take these ports in
# the gap between choosing one and the server binding it.
CHOSEN_PORTS = range(20000, 32768)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, from ``CHOSEN_PORTS``."""
    for _ in range(100):
        port = random.choice(CHOSEN_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on 127.0.0.1 in {CHOSEN_PORTS} after 100 tries")


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
