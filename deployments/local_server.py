"""The embedded default: one Prefect server and one notebook worker on this machine.

With no Prefect server configured (no ``PREFECT_API_URL``, no Prefect profile that
names one), the first command that needs Prefect starts, in the background:

- ``prefect server start`` on 127.0.0.1, port 4200 or the next free one, with the UI
  on and pointed at that port (``PREFECT_UI_API_URL``), its own ``PREFECT_HOME`` and
  SQLite database under ``$NBJOBS_HOME/server``;
- ``nbjobs serve --local-socket``: the in-process worker of ``nbjobs serve``, which
  keeps the fork server and pre-started kernels warm and runs every notebook of this
  server.

Later commands reuse both: ``nbjobs run`` becomes a client of Prefect's REST API, and
every run, from the command line, HTTP or a schedule, lands in one history and one UI.
``nbjobs server start|stop|status`` manage them. Nothing here imports Prefect: a
command that only needs the server's address answers in a fraction of a second.

Layout of ``$NBJOBS_HOME/server``::

    state.json     ports and pids (with their start times, so a reused pid is not ours)
    lock           held while starting or stopping, so two commands start one server
    prefect/       PREFECT_HOME of the server and the worker; prefect.db is the database
    server.log     the server's output
    worker.log     the worker's output
    worker.sock    ``nbjobs run`` follows its run here (the worker picks it up at once)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: toml comes with Prefect
    import toml as tomllib  # type: ignore[no-redef]

from notebook_jobs.blocks.exceptions import LocalServerError
from notebook_jobs.blocks.settings import nbjobs_home
from notebook_jobs.deployments.api import PrefectHTTP
from notebook_jobs.deployments.processes import (
    alive,
    port_free,
    stop_process_tree,
    wait_for,
)

DEFAULT_PORT = 4200
FILES_PORT = 4280  # the worker's file server (local-store links)
PORTS_TRIED = 20
# a follower that hears nothing for this long asks the API whether the run ended
FOLLOW_SILENCE_SECONDS = 2.0
LOCAL_POOL = "notebook-jobs"
# logs reach the API (and so the UI) within this much
WORKER_LOG_INTERVAL_SECONDS = "0.25"
# Runs from the UI, HTTP and schedules start within this much; `nbjobs run` hands its
# run to the worker directly. Every poll costs the idle server CPU: measured, 10 % of a
# core for the server and worker at `nbjobs serve`'s 0.5 s, 5.7 % at 2 s.
WORKER_POLL_SECONDS = "2"

Announce = Callable[[str], None]


def configured_api_url() -> str | None:
    """The Prefect API this process is told to use, or ``None`` for the embedded default.

    ``PREFECT_API_URL`` in the environment, else the active profile of
    ``$PREFECT_HOME/profiles.toml`` (``PREFECT_PROFILE`` or the file's ``active``), as
    Prefect itself resolves them. Read without importing Prefect.
    """
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):  # TOMLDecodeError is a ValueError
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    url = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(url) if url else None


@dataclass
class ServerState:
    """What ``state.json`` remembers between commands."""

    port: int | None = None
    server_pid: int | None = None
    server_started: float | None = None  # the process's create_time, against pid reuse
    worker_pid: int | None = None
    worker_started: float | None = None
    files_port: int | None = None  # the worker's file server: local-store links open there


class LocalServer:
    """The local Prefect server and its worker, under ``$NBJOBS_HOME/server``.

    Example:
        >>> server = LocalServer()
        >>> api_url = server.ensure(announce=print)   # starts both, or finds them running
        >>> server.stop()
    """

    def __init__(self, home: Path | None = None) -> None:
        self.dir = (home or nbjobs_home()).expanduser().resolve() / "server"
        self.prefect_home = self.dir / "prefect"
        self.database = self.prefect_home / "prefect.db"
        self.server_log = self.dir / "server.log"
        self.worker_log = self.dir / "worker.log"
        self.socket = self.dir / "worker.sock"
        self._state_file = self.dir / "state.json"

    # --- state ------------------------------------------------------------------

    def state(self) -> ServerState:
        """What ``state.json`` says (an empty state where there is none or it is unreadable)."""
        try:
            data = json.loads(self._state_file.read_text())
            return ServerState(**{k: data.get(k) for k in ServerState.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return ServerState()

    def _save(self, state: ServerState) -> None:
        partial = self._state_file.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(state), indent=2))
        partial.replace(self._state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.prefect_home.mkdir(parents=True, exist_ok=True)
            handle = open(self.dir / "lock", "a+")  # noqa: SIM115 - closed below
        except OSError as error:
            raise LocalServerError(
                f"cannot write the local server's folder {self.dir} ({error.strerror}); "
                "set NBJOBS_HOME to a folder you can write"
            ) from error
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            handle.close()

    def api_url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.state().port}/api"

    def ui_url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.state().port}"

    def running(self, state: ServerState | None = None) -> bool:
        """Whether the server process we started is alive and answers."""
        state = state or self.state()
        if not alive(state.server_pid, state.server_started):
            return False
        with PrefectHTTP(self.api_url(state.port), timeout=5) as api:
            return api.health()

    # --- start ------------------------------------------------------------------

    def ensure(self, announce: Announce | None = None) -> str:
        """The API URL of a running local server with its worker; starts what is missing.

        Raises:
            LocalServerError: The server or the worker could not start (the message
                names the log), or ``$NBJOBS_HOME`` is not writable.
        """
        say = announce or (lambda _: None)
        state = self.state()
        # the common case, without the lock: both running
        if alive(state.worker_pid, state.worker_started) and self.running(state):
            return self.api_url(state.port)
        with self._locked():
            state = self.state()  # another command may have started them meanwhile
            server: subprocess.Popen[bytes] | None = None
            if not alive(state.server_pid, state.server_started):
                if state.server_pid:
                    say(
                        f"the local Prefect server (pid {state.server_pid}) is no longer "
                        "running; starting it again"
                    )
                # a worker of the server that died goes too: a new one starts with it
                stop_process_tree(state.worker_pid, state.worker_started)
                state, server = self._start_server(state, say)
            worker: subprocess.Popen[bytes] | None = None
            if not alive(state.worker_pid, state.worker_started):
                if state.worker_pid and server is None:
                    say(
                        f"the local worker (pid {state.worker_pid}) is no longer running; "
                        "starting it again"
                    )
                # started at once: its imports overlap the server's start, and it
                # waits for the API itself before it registers anything
                state, worker = self._start_worker(state)
            try:
                self._wait_healthy(state, server)
                if worker is not None:
                    self._wait_listening(worker)
            except LocalServerError:
                # no stale pid is left behind for what did not start
                stop_process_tree(state.worker_pid, state.worker_started)
                state.worker_pid = state.worker_started = None
                if server is not None:
                    stop_process_tree(state.server_pid, state.server_started)
                    state = ServerState(port=state.port)
                self._save(state)
                raise
            return self.api_url(state.port)

    def _child_env(self, port: int) -> dict[str, str]:
        """The user's environment without their Prefect settings, pointed at this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            {
                "PREFECT_HOME": str(self.prefect_home),
                "PREFECT_API_URL": self.api_url(port),
                "PREFECT_UI_URL": self.ui_url(port),
                # The UI calls the API at this address; without it, it calls port 4200
                # and every page renders blank on any other port.
                "PREFECT_UI_API_URL": self.api_url(port),
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.database}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "true",
            }
        )
        return env

    def _pick_port(self, state: ServerState, say: Announce) -> int:
        wanted = state.port or DEFAULT_PORT
        if port_free(wanted):
            return wanted
        for port in range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TRIED):
            if port != wanted and port_free(port):
                say(f"port {wanted} is in use by another program; the local server uses {port}")
                return port
        raise LocalServerError(
            f"ports {DEFAULT_PORT} to {DEFAULT_PORT + PORTS_TRIED - 1} on 127.0.0.1 are all in "
            "use; free one, or set PREFECT_API_URL to a Prefect server you run yourself"
        )

    def _pick_files_port(self, state: ServerState) -> int:
        """The worker's file server port: the one used before (links in earlier summaries
        keep working), else the first free one from ``FILES_PORT``."""
        if state.files_port and port_free(state.files_port):
            return state.files_port
        for port in range(FILES_PORT, FILES_PORT + PORTS_TRIED):
            if port != state.port and port_free(port):
                return port
        raise LocalServerError(
            f"ports {FILES_PORT} to {FILES_PORT + PORTS_TRIED - 1} on 127.0.0.1 are all in "
            "use; free one for the local worker's file server"
        )

    def _spawn(
        self, command: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        """Start a background process of ours, its output appended to ``log_path``.

        Raises:
            LocalServerError: The program could not be started at all.
        """
        try:
            with open(log_path, "ab") as log:
                return subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # its own session: the Ctrl-C of the command that started it is not its
                    start_new_session=True,
                    cwd=self.dir,
                )
        except OSError as error:
            raise LocalServerError(f"could not start {command[0]}: {error}") from error

    def _start_server(
        self, state: ServerState, say: Announce
    ) -> tuple[ServerState, subprocess.Popen[bytes]]:
        port = self._pick_port(state, say)
        first = not self.database.exists()
        say(
            f"starting the local Prefect server at {self.ui_url(port)} "
            + (
                "(the first start sets up its database and takes up to a minute; "
                "later commands reuse it)"
                if first
                else "(later commands reuse it)"
            )
        )
        command = [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        process = self._spawn(command, self._child_env(port), self.server_log)
        state = ServerState(
            port=port,
            server_pid=process.pid,
            server_started=psutil.Process(process.pid).create_time(),
        )
        self._save(state)
        return state, process

    def _wait_healthy(
        self, state: ServerState, process: subprocess.Popen[bytes] | None = None
    ) -> None:
        def stopped() -> bool:
            if process is not None:
                return process.poll() is not None
            return not alive(state.server_pid, state.server_started)

        with PrefectHTTP(self.api_url(state.port), timeout=5) as api:
            try:
                wait_for(api.health, stopped, "the local Prefect server", self.server_log)
            except LocalServerError as error:
                if "Can't locate revision" in str(error):
                    raise LocalServerError(
                        f"the local Prefect server stopped while starting: its database "
                        f"{self.database} was written by a newer Prefect than this one; move "
                        f"it aside to start with an empty one (log: {self.server_log})",
                        log=self.server_log,
                    ) from error
                raise

    def _start_worker(self, state: ServerState) -> tuple[ServerState, subprocess.Popen[bytes]]:
        assert state.port is not None
        self.socket.unlink(missing_ok=True)  # a killed worker's
        env = self._child_env(state.port)
        env["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = WORKER_LOG_INTERVAL_SECONDS
        env["PREFECT_WORKER_QUERY_SECONDS"] = WORKER_POLL_SECONDS
        state.files_port = self._pick_files_port(state)
        command = [
            sys.executable,
            "-m",
            "notebook_jobs.deployments.cli",
            "serve",
            "--pool",
            LOCAL_POOL,
            "--local-socket",
            str(self.socket),
            "--files-port",
            str(state.files_port),
        ]
        process = self._spawn(command, env, self.worker_log)
        state.worker_pid = process.pid
        state.worker_started = psutil.Process(process.pid).create_time()
        self._save(state)
        return state, process

    def _wait_listening(self, process: subprocess.Popen[bytes]) -> None:
        """Wait until the worker listens: it has registered its deployment and started
        its kernels."""
        wait_for(
            self.socket.exists,
            stopped=lambda: process.poll() is not None,
            what="the local worker",
            log=self.worker_log,
        )

    def follow(self, flow_run_id: str) -> socket.socket | None:
        """A connection on which the worker streams this run's progress and outcome
        (``deployments.run_channel.RunChannel``), or ``None`` where it cannot be reached (the
        caller then polls the API; the worker's own polling picks the run up)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(FOLLOW_SILENCE_SECONDS)
            sock.connect(str(self.socket))
            sock.sendall(json.dumps({"follow": flow_run_id}).encode() + b"\n")
        except OSError:
            sock.close()
            return None
        return sock

    # --- stop and status --------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop the worker (its kernels with it), then the server; what was stopped."""
        stopped: list[str] = []
        with self._locked():
            state = self.state()
            if stop_process_tree(state.worker_pid, state.worker_started):
                stopped.append(f"worker (pid {state.worker_pid})")
            if stop_process_tree(state.server_pid, state.server_started):
                stopped.append(f"server (pid {state.server_pid})")
            self._save(ServerState(port=state.port, files_port=state.files_port))
            with contextlib.suppress(OSError):
                self.socket.unlink()
        return stopped

    def status(self) -> dict[str, Any]:
        """URL, pids, uptime, database and logs, as ``nbjobs server status`` prints them."""
        state = self.state()
        server_up = alive(state.server_pid, state.server_started)
        worker_up = alive(state.worker_pid, state.worker_started)
        now = time.time()
        return {
            "running": server_up and self.running(),
            "url": self.ui_url(state.port) if state.port else None,
            "api_url": self.api_url(state.port) if state.port else None,
            "server_pid": state.server_pid if server_up else None,
            "server_uptime_seconds": round(now - state.server_started, 1)
            if server_up and state.server_started
            else None,
            "worker_pid": state.worker_pid if worker_up else None,
            "worker_uptime_seconds": round(now - state.worker_started, 1)
            if worker_up and state.worker_started
            else None,
            "files_url": f"http://127.0.0.1:{state.files_port}"
            if worker_up and state.files_port
            else None,
            "database": str(self.database),
            "server_log": str(self.server_log),
            "worker_log": str(self.worker_log),
        }
