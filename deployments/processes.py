"""The background processes the local server starts: alive, ready, stopped.

Standard library and psutil only: ``nbjobs run`` checks them on every call.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from notebook_jobs.blocks.exceptions import LocalServerError
from notebook_jobs.blocks.settings import settings

# NBJOBS_SERVER_START_TIMEOUT (blocks/settings.py) is 300 s by default. A first start
# migrates a new SQLite database: about 15 s on an idle 2-core machine, and several
# times that with both cores busy. Prefect's own temporary server gives up after 20 s;
# we would rather wait than fail a user's first command.
STOP_TIMEOUT_SECONDS = 20.0
HEALTH_POLL_SECONDS = 0.25


# A start time below this is seconds since boot (``started_at``); above it, seconds
# since the epoch, as state.json kept it before (a server started by an older nbjobs).
EPOCH_FLOOR_SECONDS = 1e9


def started_at(pid: int) -> float:
    """When ``pid`` started, in seconds since the machine booted.

    Not the epoch time ``create_time()`` gives alone: that adds the boot time the kernel
    reports, which moves whenever the wall clock is set (NTP, a virtual machine resumed
    after a pause). A CI machine resumed mid-run moved it by more than a second, and
    every command then took the running server for a stranger with its pid.
    """
    return _since_boot(psutil.Process(pid))


def _since_boot(process: psutil.Process) -> float:
    began: float = process.create_time() - psutil.boot_time()  # one boot time, read now
    return began


def alive(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` is still the process we started (not a later one with its pid)."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is None:
            return True
        if started >= EPOCH_FLOOR_SECONDS:
            return bool(abs(process.create_time() - started) < 1.0)
        return abs(_since_boot(process) - started) < 1.0
    except psutil.Error:
        return False


def uptime(pid: int | None) -> float | None:
    """Seconds since ``pid`` started, to a tenth; None if it is gone."""
    if not pid:
        return None
    try:
        began: float = psutil.Process(pid).create_time()  # the boot time as it is now
        return round(time.time() - began, 1)
    except psutil.Error:
        return None


def listens_on(pid: int | None, port: int | None) -> bool:
    """Whether the process ``pid``, or one it started, listens on ``port``."""
    try:
        root = psutil.Process(pid)
        for process in (root, *root.children(recursive=True)):
            for connection in process.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
                    return True
    except psutil.Error:
        pass
    return False


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 200) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def last_error(path: Path) -> str:
    """The line of a log that says best why a process ended."""
    lines = [line.strip() for line in _tail(path) if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


# what a server says, in the last lines of its log, when its port was taken: uvicorn's
# bind error, and Prefect's own check before it (``Port 4203 is already in use. Please
# specify a different port with the `--port` flag.``, its line folded at 80 columns)
PORT_TAKEN_SAYINGS = ("address already in use", "is already in use")


def port_taken(error: LocalServerError) -> bool:
    """Whether a server stopped while starting because its port was taken."""
    return error.log is not None and any(
        saying in line.lower() for line in _tail(error.log, 40) for saying in PORT_TAKEN_SAYINGS
    )


def start_timeout_seconds() -> float:
    """``$NBJOBS_SERVER_START_TIMEOUT``: how long a start may take (default 300 s).

    Raises:
        SettingsError: The value is not a number of seconds.
    """
    return settings().server_start_timeout_seconds


def wait_for(
    ready: Callable[[], bool],
    stopped: Callable[[], bool],
    what: str,
    log: Path,
    poll_seconds: float = HEALTH_POLL_SECONDS,
) -> None:
    """Poll ``ready`` every ``poll_seconds`` until it holds; fail at once if ``stopped``,
    or at the deadline (``NBJOBS_SERVER_START_TIMEOUT``).

    Raises:
        LocalServerError: Naming ``what``, why, and ``log``.
    """
    timeout = start_timeout_seconds()
    deadline = time.monotonic() + timeout
    while not ready():
        if stopped():
            raise LocalServerError(
                f"{what} stopped while starting: {last_error(log)} (log: {log})", log=log
            )
        if time.monotonic() > deadline:
            raise LocalServerError(
                f"{what} did not answer within {timeout:.0f} s (log: {log}); "
                "set NBJOBS_SERVER_START_TIMEOUT to wait longer",
                log=log,
            )
        time.sleep(poll_seconds)


def stop_process_tree(
    pid: int | None, started: float | None, sig: signal.Signals = signal.SIGTERM
) -> bool:
    """Stop a process we started, and what it started; whether it was running.

    ``sig`` (SIGTERM; PostgreSQL's fast shutdown is SIGINT) to the process itself,
    which stops its own children (the worker shuts its kernels and fork server down);
    after ``STOP_TIMEOUT_SECONDS``, SIGKILL to it and to whatever of its process tree
    is left.
    """
    if not pid or not alive(pid, started):
        return False
    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
        process.send_signal(sig)
    except psutil.Error:
        return False  # it ended meanwhile
    _, remaining = psutil.wait_procs([process], timeout=STOP_TIMEOUT_SECONDS)
    for leftover in remaining + [p for p in family[1:] if p.is_running()]:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    psutil.wait_procs(family, timeout=5)
    return True
