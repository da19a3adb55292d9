"""The local server's folder: where everything is, what ``state.json`` remembers.

Standard library and psutil only, as all of the local server's modules: ``nbjobs
run`` reads the state on every call.

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
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: toml comes with Prefect
    import toml as tomllib  # type: ignore[no-redef]

from notebook_jobs.blocks.exceptions import LocalServerError
from notebook_jobs.blocks.settings import nbjobs_home
from notebook_jobs.deployments.local_access import (
    Credentials,
    open_private_log,
    private_folder,
    write_private,
)
from notebook_jobs.deployments.local_postgres import LocalPostgres
from notebook_jobs.deployments.processes import alive

POSTGRESQL, SQLITE = "postgresql", "sqlite"


def configured_api_url() -> str | None:
    """The Prefect API this process is told to use, or ``None`` for the embedded default.

    ``PREFECT_API_URL`` in the environment, else the active profile of
    ``$PREFECT_HOME/profiles.toml`` (``PREFECT_PROFILE`` or the file's ``active``), as
    Prefect itself resolves them. Read without importing Prefect.
    """
    return configured_setting("PREFECT_API_URL")


def configured_setting(name: str) -> str | None:
    """A Prefect setting (``PREFECT_API_AUTH_STRING``, ``PREFECT_UI_URL``...) as Prefect
    resolves it: the environment, else the active profile; read without Prefect."""
    if os.environ.get(name):
        return os.environ[name]
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):  # TOMLDecodeError is a ValueError
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    value = profiles.get("profiles", {}).get(active, {}).get(name)
    return str(value) if value else None


@dataclass
class ServerState:
    """What ``state.json`` remembers between commands."""

    port: int | None = None
    server_pid: int | None = None
    server_started: float | None = None  # processes.started_at, against pid reuse
    worker_pid: int | None = None
    worker_started: float | None = None
    files_port: int | None = None  # the worker's file server: local-store links open there
    database: str | None = None  # "postgresql" or "sqlite"; None: not chosen yet
    auth: bool = True  # the API asks for the credentials (--no-auth: it does not)
    postgres_pid: int | None = None
    postgres_started: float | None = None

    def remembered(self) -> ServerState:
        """What outlives a stop: the ports (earlier links keep working) and the choices."""
        return ServerState(
            port=self.port, files_port=self.files_port, database=self.database, auth=self.auth
        )


class ServerFolder:
    """``$NBJOBS_HOME/server``: its paths, its state, its lock, its credentials."""

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
        """The database the server uses: the one chosen, else PostgreSQL.

        A home with a SQLite history and no PostgreSQL one (made before PostgreSQL)
        keeps SQLite: ``--database postgresql`` moves to an empty history, and the
        SQLite file stays. A lost ``state.json`` never hides a PostgreSQL history.
        """
        if state.database:
            return state.database
        if self.sqlite_database.exists() and not self.postgres.exists():
            return SQLITE
        return POSTGRESQL

    def _database_alive(self, state: ServerState) -> bool:
        if self.database_of(state) != POSTGRESQL:
            return True
        return alive(state.postgres_pid, state.postgres_started)

    def database_location(self, state: ServerState) -> Path:
        """The data folder of PostgreSQL, or SQLite's file."""
        if self.database_of(state) == POSTGRESQL:
            return self.postgres.data
        return self.sqlite_database

    def api_url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.state().port}/api"

    def ui_url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.state().port}"
