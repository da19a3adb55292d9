"""The embedded default: one Prefect server, its database and one notebook worker here.

With no Prefect server configured (no ``PREFECT_API_URL``, no Prefect profile that
names one), the first command that needs Prefect starts, in the background:

- a PostgreSQL of its own (``deployments.local_postgres``; SQLite when asked, or in a
  home that has a SQLite history);
- ``prefect server start`` on 127.0.0.1, port 4200 or the next free one, with the UI
  on and pointed at that port (``PREFECT_UI_API_URL``), its own ``PREFECT_HOME``, asking
  for the credentials in ``$NBJOBS_HOME/server/credentials``;
- ``nbjobs serve --local-socket``: the in-process worker of ``nbjobs serve``, which
  keeps the fork server and pre-started kernels warm and runs every notebook of this
  server.

Later commands reuse them: ``nbjobs run`` becomes a client of Prefect's REST API, and
every run, from the command line, HTTP or a schedule, lands in one history and one UI.
``nbjobs server start|stop|status`` manage them. Nothing here imports Prefect: a
command that only needs the server's address answers in a fraction of a second.

Where each keeps its files: ``deployments.local_state``; how each starts:
``deployments.local_launch``; what is private to the owner, and how:
``deployments.local_access``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from typing import Any

from notebook_jobs.blocks.exceptions import LocalServerError
from notebook_jobs.deployments.api import PrefectHTTP
from notebook_jobs.deployments.local_launch import Announce, Launcher
from notebook_jobs.deployments.local_state import ServerState
from notebook_jobs.deployments.processes import alive, port_taken, stop_process_tree, uptime

# a follower that hears nothing for this long asks the API whether the run ended
FOLLOW_SILENCE_SECONDS = 2.0
# starts of the server on another port when one that was free is taken before it binds
# (another home's server starting at the same moment)
PORT_RACES = 4


class LocalServer(Launcher):
    """The local Prefect server and its worker, under ``$NBJOBS_HOME/server``.

    Example:
        >>> server = LocalServer()
        >>> api_url = server.ensure(announce=print)   # starts both, or finds them running
        >>> server.stop()
    """

    def running(self, state: ServerState | None = None) -> bool:
        """Whether the server process we started, and its database, are alive and answer."""
        state = state or self.state()
        if not alive(state.server_pid, state.server_started) or not self._database_alive(state):
            return False
        with PrefectHTTP(self.api_url(state.port), timeout=5) as api:
            return api.health()

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
                state.server_pid = state.server_started = None  # said already
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
                for attempt in range(PORT_RACES):
                    try:
                        self._wait_healthy(state, server)
                        break
                    except LocalServerError as error:
                        # another server took the port between our check and its bind
                        if server is None or not port_taken(error) or attempt + 1 == PORT_RACES:
                            raise
                        stop_process_tree(state.worker_pid, state.worker_started)
                        state, server = self._start_server(state, say)
                        state, worker = self._start_worker(state)
                if worker is not None:
                    self._wait_listening(worker)
            except LocalServerError:
                # no stale pid is left behind for what did not start
                stop_process_tree(state.worker_pid, state.worker_started)
                state.worker_pid = state.worker_started = None
                if server is not None:
                    stop_process_tree(state.server_pid, state.server_started)
                    self._stop_postgres(state)
                    state = state.remembered()
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

    def _connect(self, sock: socket.socket) -> None:
        """Connect ``sock`` to the worker's socket; a silence longer than
        ``FOLLOW_SILENCE_SECONDS`` then raises ``TimeoutError`` to its reader."""
        sock.settimeout(FOLLOW_SILENCE_SECONDS)
        sock.connect(str(self.socket))

    def hand_over(self, environment: dict[str, str], key: str) -> socket.socket | None:
        """A connection to the worker that holds ``environment`` for the run about to be
        created with idempotency key ``key`` (``deployments.run_channel``): the run's
        kernel gets it on top of the worker's own. ``None`` where the worker cannot be
        reached (the run then has the worker's environment only)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connect(sock)
            request = {"environment": environment, "key": key}
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as answer:
                if json.loads(answer.readline() or b"{}").get("event") != "ready":
                    raise OSError("the worker did not take the environment")
        except (OSError, ValueError):
            sock.close()
            return None
        return sock

    def follow(
        self, flow_run_id: str, channel: socket.socket | None = None
    ) -> socket.socket | None:
        """A connection on which the worker streams this run's progress and outcome
        (``deployments.run_channel.RunChannel``): ``channel`` from ``hand_over``, else a
        new one; ``None`` where it cannot be reached (the caller then polls the API; the
        worker's own polling picks the run up)."""
        sock = channel or socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if channel is None:
                self._connect(sock)
            sock.sendall(json.dumps({"follow": flow_run_id}).encode() + b"\n")
        except OSError:
            sock.close()
            return None
        return sock

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
            self._save(state.remembered())
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
            "server_uptime_seconds": uptime(state.server_pid) if server_up else None,
            "worker_pid": state.worker_pid if worker_up else None,
            "worker_uptime_seconds": uptime(state.worker_pid) if worker_up else None,
            "files_url": f"http://127.0.0.1:{state.files_port}"
            if worker_up and state.files_port
            else None,
            "database_kind": database,
            "database": str(self.database_location(state)),
            "postgres_pid": state.postgres_pid if postgres_up else None,
            "server_log": str(self.server_log),
            "worker_log": str(self.worker_log),
            "postgres_log": str(self.postgres.log),
            "credentials": str(self.credentials.path),
        }
