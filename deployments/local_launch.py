"""How the local server's three processes start: PostgreSQL, Prefect's server, the worker.

Each is a background process of ours in its own session, its output in a 0600 log,
its pid and start time in ``state.json``; ``deployments.local_server`` decides what
to start and when.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from notebook_jobs.blocks.exceptions import LocalServerError
from notebook_jobs.deployments.api import PrefectHTTP
from notebook_jobs.deployments.file_server import bind_first
from notebook_jobs.deployments.local_access import open_private_log
from notebook_jobs.deployments.local_state import (
    POSTGRESQL,
    ServerFolder,
    ServerState,
)
from notebook_jobs.deployments.processes import (
    alive,
    listens_on,
    port_free,
    started_at,
    stop_process_tree,
    wait_for,
)

DEFAULT_PORT = 4200
FILES_PORT = 4280  # the worker's file server (local-store links)
PORTS_TRIED = 20
LOCAL_POOL = "notebook-jobs"
# logs reach the API (and so the UI) within this much
WORKER_LOG_INTERVAL_SECONDS = "0.25"
# Runs from the UI, HTTP and schedules start within this much; `nbjobs run` hands its
# run to the worker directly. Every poll costs the idle server CPU: measured, 10 % of a
# core for the server and worker at `nbjobs serve`'s 0.5 s, 5.7 % at 2 s.
WORKER_POLL_SECONDS = "2"
# what the server and its database write is the owner's alone
PRIVATE_UMASK = 0o077

Announce = Callable[[str], None]


class Launcher(ServerFolder):
    """Starts the local server's processes, one at a time, recording each in the state."""

    def _child_env(self, state: ServerState, *, server: bool = False) -> dict[str, str]:
        """The user's environment without their Prefect settings, pointed at this server
        (``server``: the environment of the server itself, which checks the credentials
        that the others send)."""
        port = state.port
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        database_url = (
            self.postgres.url()
            if self.database_of(state) == POSTGRESQL
            else f"sqlite+aiosqlite:///{self.sqlite_database}"
        )
        auth_string = self.auth_string(state)
        if auth_string:
            env["PREFECT_API_AUTH_STRING"] = auth_string  # the server's own clients too
            if server:
                env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
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

    def _bind_files_port(self, state: ServerState) -> socket.socket:
        """The worker's file server socket, bound here and handed to the worker (never
        checked free and bound later, which another starting server could take between):
        the port used before (links in earlier summaries keep working), else the first
        free one from ``FILES_PORT``."""
        if state.files_port:
            with contextlib.suppress(OSError):
                return bind_first(state.files_port, 1)
        try:
            return bind_first(FILES_PORT, PORTS_TRIED, {state.port} if state.port else set())
        except OSError:
            raise LocalServerError(
                f"ports {FILES_PORT} to {FILES_PORT + PORTS_TRIED - 1} on 127.0.0.1 are all in "
                "use; free one for the local worker's file server"
            ) from None

    def _spawn(
        self,
        command: list[str],
        env: dict[str, str],
        log_path: Path,
        pass_fds: tuple[int, ...] = (),
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
                    pass_fds=pass_fds,
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
        login: str | Path | None = None
        if state.auth:
            try:
                self.credentials.read()
                login = self.credentials.path  # shown once: later starts name its file
            except LocalServerError:  # a first start, or a file lost: the server is down
                login = self.credentials.make()  # shown, as Jupyter shows its token
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
        process = self._spawn(command, self._child_env(state, server=True), self.server_log)
        state.server_pid = process.pid
        state.server_started = started_at(process.pid)
        state.worker_pid = state.worker_started = None
        self._save(state)
        if login is not None:
            say(
                f"the UI at {self.ui_url(port)} asks for a login: {login} "
                "(`nbjobs server status` shows it)"
            )
        return state, process

    def _start_postgres(self, state: ServerState, say: Announce) -> ServerState:
        """The server's PostgreSQL, started unless it runs already (its data made once)."""
        if alive(state.postgres_pid, state.postgres_started):
            return state
        self.postgres.initialise(say)
        process = self._spawn(self.postgres.command(), dict(os.environ), self.postgres.log)
        state.postgres_pid = process.pid
        state.postgres_started = started_at(process.pid)
        self._save(state)
        try:
            self.postgres.wait_ready(process.pid, process.poll)
        except LocalServerError:
            self._stop_postgres(state)
            state.postgres_pid = state.postgres_started = None
            self._save(state)
            raise
        return state

    def _stop_postgres(self, state: ServerState) -> bool:
        # SIGINT is PostgreSQL's fast shutdown: clients are let go, the data is consistent
        return stop_process_tree(state.postgres_pid, state.postgres_started, signal.SIGINT)

    def _wait_healthy(
        self, state: ServerState, process: subprocess.Popen[bytes] | None = None
    ) -> None:
        def stopped() -> bool:
            if process is not None:
                return process.poll() is not None
            return not alive(state.server_pid, state.server_started)

        def ours_answers() -> bool:
            # another home's server that won the port would answer the health check too
            return api.health() and listens_on(state.server_pid, state.port)

        with PrefectHTTP(self.api_url(state.port), timeout=5) as api:
            try:
                wait_for(ours_answers, stopped, "the local Prefect server", self.server_log)
            except LocalServerError as error:
                if "Can't locate revision" in str(error):
                    raise LocalServerError(
                        f"the local Prefect server stopped while starting: its database "
                        f"{self.database_location(state)} was written by a newer Prefect than "
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
        with self._bind_files_port(state) as files:
            state.files_port = files.getsockname()[1]
            command = [
                sys.executable,
                "-m",
                "notebook_jobs.deployments.cli",
                "serve",
                "--pool",
                LOCAL_POOL,
                "--local-socket",
                str(self.socket),
                "--files-fd",
                str(files.fileno()),
            ]
            process = self._spawn(command, env, self.worker_log, (files.fileno(),))
        state.worker_pid = process.pid
        state.worker_started = started_at(process.pid)
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
