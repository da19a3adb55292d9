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

    state.json     ports, pids (with their start times, so a reused pid is not ours),
                   the database and whether the API asks for credentials
    lock           held while starting or stopping, so two commands start one server
    credentials    the API's ``user:password`` (``deployments.local_access``)
    postgres/      the PostgreSQL database (``deployments.local_postgres``), the default
    prefect/       PREFECT_HOME of the server and the worker; prefect.db is the SQLite
                   database (``--database sqlite``, and homes made before PostgreSQL)
    server.log     the server's output (postgres.log: the database's)
    worker.log     the worker's output
    worker.sock    ``nbjobs run`` follows its run here (the worker picks it up at once)

All of it is private to its owner: folders 0700, files 0600, an API that asks for the
credentials, a database reached only through a socket in a 0700 folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
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
from notebook_jobs.deployments.local_access import (
    Credentials,
    open_private_log,
    private_folder,
    write_private,
)
from notebook_jobs.deployments.local_postgres import LocalPostgres
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
POSTGRESQL, SQLITE = "postgresql", "sqlite"
# what the server and its database write is the owner's alone
PRIVATE_UMASK = 0o077

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
    database: str | None = None  # "postgresql" or "sqlite"; None: not chosen yet
    auth: bool = True  # the API asks for the credentials (--no-auth: it does not)
    postgres_pid: int | None = None
    postgres_started: float | None = None


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
        self.sqlite_database = self.prefect_home / "prefect.db"
        self.postgres = LocalPostgres(self.dir)
        self.credentials = Credentials(self.dir / "credentials")
        self.server_log = self.dir / "server.log"
        self.worker_log = self.dir / "worker.log"
        self.socket = self.dir / "worker.sock"
        self._state_file = self.dir / "state.json"

    # --- state ------------------------------------------------------------------

    def state(self) -> ServerState:
        """What ``state.json`` says (an empty state where there is none or it is unreadable)."""
        try:
            data = json.loads(self._state_file.read_text())
            fields = ServerState.__dataclass_fields__
            return ServerState(**{k: data[k] for k in fields if data.get(k) is not None})
        except (OSError, ValueError, TypeError):
            return ServerState()

    def _save(self, state: ServerState) -> None:
        write_private(self._state_file, json.dumps(asdict(state), indent=2))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        for folder in (self.dir.parent, self.dir, self.prefect_home):
            private_folder(folder)
        try:
            descriptor = open_private_log(self.dir / "lock")
        except OSError as error:
            raise LocalServerError(
                f"cannot write the local server's folder {self.dir} ({error.strerror}); "
                "set NBJOBS_HOME to a folder you can write"
            ) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def auth_string(self, state: ServerState | None = None) -> str | None:
        """The credentials every client of this server sends (None with ``--no-auth``).

        Raises:
            LocalServerError: The credentials file is missing or unreadable.
        """
        state = state or self.state()
        return self.credentials.read() if state.auth else None

    def database_of(self, state: ServerState) -> str:
        """The database the server uses: the one chosen, else PostgreSQL, except in a
        home that already has a SQLite history (kept: ``--database postgresql`` moves
        to PostgreSQL with an empty history, and the SQLite file stays)."""
        if state.database:
            return state.database
        return SQLITE if self.sqlite_database.exists() else POSTGRESQL

    def _database_alive(self, state: ServerState) -> bool:
        if self.database_of(state) != POSTGRESQL:
            return True
        return alive(state.postgres_pid, state.postgres_started)

    def api_url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.state().port}/api"

    def ui_url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.state().port}"

    def running(self, state: ServerState | None = None) -> bool:
        """Whether the server process we started, and its database, are alive and answer."""
        state = state or self.state()
        if not alive(state.server_pid, state.server_started) or not self._database_alive(state):
            return False
        with PrefectHTTP(self.api_url(state.port), timeout=5) as api:
            return api.health()

    # --- start ------------------------------------------------------------------

    def ensure(
        self,
        announce: Announce | None = None,
        *,
        database: str | None = None,
        auth: bool | None = None,
    ) -> str:
        """The API URL of a running local server with its worker; starts what is missing.

        Args:
            announce: Told, one line at a time, what is being started and why.
            database: ``postgresql`` or ``sqlite`` for a server about to start (None:
                the one chosen before, see ``database_of``).
            auth: Whether a server about to start asks for credentials (None: as before).

        Raises:
            LocalServerError: The server, its database or the worker could not start
                (the message names the log), ``$NBJOBS_HOME`` is not writable, or a
                running server was asked for another database or auth.
        """
        say = announce or (lambda _: None)
        state = self.state()
        # the common case, without the lock: both running
        if (
            database is None
            and auth is None
            and alive(state.worker_pid, state.worker_started)
            and self.running(state)
        ):
            return self.api_url(state.port)
        with self._locked():
            state = self.state()  # another command may have started them meanwhile
            server: subprocess.Popen[bytes] | None = None
            server_up = alive(state.server_pid, state.server_started)
            if server_up and not self._database_alive(state):
                say(
                    f"the local server's PostgreSQL (pid {state.postgres_pid}) is no longer "
                    "running; starting the server again"
                )
                stop_process_tree(state.worker_pid, state.worker_started)
                stop_process_tree(state.server_pid, state.server_started)
                server_up = False
            if server_up:
                self._check_same_choices(state, database, auth)
            else:
                if database is not None:
                    state.database = database
                if auth is not None:
                    state.auth = auth
                if state.server_pid:
                    say(
                        f"the local Prefect server (pid {state.server_pid}) is no longer "
                        "running; starting it again"
                    )
                # a worker of the server that died goes too: a new one starts with it
                stop_process_tree(state.worker_pid, state.worker_started)
                state, server = self._start_server(state, say)
                if state.auth:
                    say(
                        f"the UI at {self.ui_url(state.port)} asks for a password: "
                        f"{self.auth_string(state)} (`nbjobs server status` shows it again)"
                    )
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
                    self._stop_postgres(state)
                    state = ServerState(
                        port=state.port,
                        files_port=state.files_port,
                        database=state.database,
                        auth=state.auth,
                    )
                self._save(state)
                raise
            return self.api_url(state.port)

    def _check_same_choices(
        self, state: ServerState, database: str | None, auth: bool | None
    ) -> None:
        """A running server keeps its database and auth: asking for others needs a stop."""
        running_on = self.database_of(state)
        if database is not None and database != running_on:
            raise LocalServerError(
                f"the local server is running on {running_on}; `nbjobs server stop` first "
                f"to start it on {database}"
            )
        if auth is not None and auth != state.auth:
            raise LocalServerError(
                "the local server is running "
                + ("with" if state.auth else "without")
                + " credentials; `nbjobs server stop` first to start it "
                + ("with them" if auth else "without them (--no-auth)")
            )

    def _stop_postgres(self, state: ServerState) -> bool:
        # SIGINT is PostgreSQL's fast shutdown: clients are let go, the data is consistent
        return stop_process_tree(state.postgres_pid, state.postgres_started, signal.SIGINT)

    def _child_env(self, state: ServerState) -> dict[str, str]:
        """The user's environment without their Prefect settings, pointed at this server."""
        port = state.port
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        database_url = (
            self.postgres.url()
            if self.database_of(state) == POSTGRESQL
            else f"sqlite+aiosqlite:///{self.sqlite_database}"
        )
        auth_string = self.auth_string(state)
        if auth_string:
            # the server checks it; its own clients (and the worker's) send it
            env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"] = auth_string
        env.update(
            {
                "PREFECT_HOME": str(self.prefect_home),
                "PREFECT_API_URL": self.api_url(port),
                "PREFECT_UI_URL": self.ui_url(port),
                # The UI calls the API at this address; without it, it calls port 4200
                # and every page renders blank on any other port.
                "PREFECT_UI_API_URL": self.api_url(port),
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
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
            log = open_private_log(log_path)
            try:
                return subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # its own session: the Ctrl-C of the command that started it is not its
                    start_new_session=True,
                    cwd=self.dir,
                    umask=PRIVATE_UMASK,
                )
            finally:
                os.close(log)
        except OSError as error:
            raise LocalServerError(f"could not start {command[0]}: {error}") from error

    def _start_server(
        self, state: ServerState, say: Announce
    ) -> tuple[ServerState, subprocess.Popen[bytes]]:
        port = self._pick_port(state, say)
        database = self.database_of(state)
        if database == POSTGRESQL:
            first = not self.postgres.exists()
            state = self._start_postgres(state, say)
        else:
            first = not self.sqlite_database.exists()
            if state.database is None:
                say(
                    f"the local server keeps its SQLite database {self.sqlite_database} and "
                    "its history; `nbjobs server stop` then `nbjobs server start --database "
                    "postgresql` moves to PostgreSQL with an empty history (this file stays, "
                    "and --database sqlite uses it again)"
                )
        state.database = database
        if state.auth:
            try:
                self.credentials.read()
            except LocalServerError:  # a first start, or a file lost: the server is down
                self.credentials.make()
        say(
            f"starting the local Prefect server at {self.ui_url(port)} on {database} "
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
        state.port = port
        process = self._spawn(command, self._child_env(state), self.server_log)
        state.server_pid = process.pid
        state.server_started = psutil.Process(process.pid).create_time()
        state.worker_pid = state.worker_started = None
        self._save(state)
        return state, process

    def _start_postgres(self, state: ServerState, say: Announce) -> ServerState:
        """The server's PostgreSQL, started unless it runs already (its data made once)."""
        if alive(state.postgres_pid, state.postgres_started):
            return state
        self.postgres.initialise(say)
        process = self._spawn(self.postgres.command(), dict(os.environ), self.postgres.log)
        state.postgres_pid = process.pid
        state.postgres_started = psutil.Process(process.pid).create_time()
        self._save(state)
        try:
            self.postgres.wait_ready(process.pid, process.poll)
        except LocalServerError:
            self._stop_postgres(state)
            state.postgres_pid = state.postgres_started = None
            self._save(state)
            raise
        return state

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
                        f"{self.status()['database']} was written by a newer Prefect than "
                        f"this one; move it aside to start with an empty one "
                        f"(log: {self.server_log})",
                        log=self.server_log,
                    ) from error
                raise

    def _start_worker(self, state: ServerState) -> tuple[ServerState, subprocess.Popen[bytes]]:
        assert state.port is not None
        self.socket.unlink(missing_ok=True)  # a killed worker's
        env = self._child_env(state)
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
        """Stop the worker (its kernels with it), the server, then its database; what was
        stopped."""
        stopped: list[str] = []
        with self._locked():
            state = self.state()
            if stop_process_tree(state.worker_pid, state.worker_started):
                stopped.append(f"worker (pid {state.worker_pid})")
            if stop_process_tree(state.server_pid, state.server_started):
                stopped.append(f"server (pid {state.server_pid})")
            if self._stop_postgres(state):
                stopped.append(f"PostgreSQL (pid {state.postgres_pid})")
            self._save(
                ServerState(
                    port=state.port,
                    files_port=state.files_port,
                    database=state.database,
                    auth=state.auth,
                )
            )
            with contextlib.suppress(OSError):
                self.socket.unlink()
        return stopped

    def status(self) -> dict[str, Any]:
        """URL, pids, uptime, database, login and logs, as ``nbjobs server status`` prints
        them."""
        state = self.state()
        server_up = alive(state.server_pid, state.server_started)
        worker_up = alive(state.worker_pid, state.worker_started)
        postgres_up = alive(state.postgres_pid, state.postgres_started)
        database = self.database_of(state)
        running = server_up and self.running(state)
        now = time.time()
        login: str | None = None
        if running and state.auth:
            with contextlib.suppress(LocalServerError):
                login = self.auth_string(state)
        return {
            "running": running,
            "url": self.ui_url(state.port) if state.port else None,
            "api_url": self.api_url(state.port) if state.port else None,
            "auth": state.auth,
            "login": login,
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
            "database_kind": database,
            "database": str(self.postgres.data if database == POSTGRESQL else self.sqlite_database),
            "postgres_pid": state.postgres_pid if postgres_up else None,
            "server_log": str(self.server_log),
            "worker_log": str(self.worker_log),
            "postgres_log": str(self.postgres.log),
            "credentials": str(self.credentials.path),
        }
