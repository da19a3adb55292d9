"""Fork servers: warm Python processes that fork kernels, and the kernels forked ahead.

A ``ForkServer`` runs ``forkserver.py`` under a kernelspec's own Python, which imports
ipykernel once; it forks each kernel it is asked for and reports how each ended. The
``ForkServers`` of one owner (a ``LocalExecutor``) keep one per Python, and with
``ahead`` the next run's kernel forked already. ``ForkingProvisioner``
(``tasks.engine.kernels.fork``) is how jupyter_client launches kernels through them.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
from jupyter_client.connect import KernelConnectionInfo, write_connection_file

from notebook_jobs.blocks.exceptions import ForkServerError

FORK_SERVER_SCRIPT = Path(__file__).with_name("forkserver.py")
FORK_SERVER_STARTUP_TIMEOUT_SECONDS = 60

log = logging.getLogger("nbjobs.kernel_fork")


def fork_plan(cmd: list[str]) -> tuple[str, list[str]] | None:
    """``(python, kernel arguments)`` when ``cmd`` starts an ipykernel we can fork.

    >>> fork_plan(["/v/bin/python", "-m", "ipykernel_launcher", "-f", "/k.json"])
    ('/v/bin/python', ['-f', '/k.json'])
    >>> fork_plan(["julia", "-i", "kernel.jl", "/k.json"]) is None
    True
    """
    if len(cmd) < 3 or cmd[1:3] not in (["-m", "ipykernel_launcher"], ["-m", "ipykernel"]):
        return None
    python = cmd[0]
    if python in ("python", f"python{sys.version_info[0]}"):
        python = sys.executable
    resolved = shutil.which(python)
    return (resolved, list(cmd[3:])) if resolved else None


class ForkServer:
    """One running fork server: forks kernels on request and reports how they end."""

    def __init__(self, python: str, env: dict[str, str], preload: tuple[str, ...] = ()) -> None:
        self.python = python
        self._process = subprocess.Popen(
            [python, str(FORK_SERVER_SCRIPT), *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin: IO[bytes] = self._process.stdin
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._pending: dict[int, concurrent.futures.Future[int]] = {}
        self._exits: dict[int, int] = {}
        self._alive = True
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout,), name="nbjobs-fork-server", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self, timeout: float = FORK_SERVER_STARTUP_TIMEOUT_SECONDS) -> None:
        try:
            self._ready.result(timeout)
        except concurrent.futures.TimeoutError as error:
            self.close()
            raise ForkServerError(f"the fork server did not start in {timeout:g} s") from error

    @property
    def alive(self) -> bool:
        return self._alive and self._process.poll() is None

    @property
    def was_ready(self) -> bool:
        return self._ready.done() and self._ready.exception() is None

    @property
    def ready(self) -> bool:
        return self.was_ready and self.alive

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if "exit" in message:
                    self._exits[int(message["exit"])] = int(message["status"])
                elif message.get("ready"):
                    self._ready.set_result(int(message["pid"]))
                elif "id" in message:
                    future = self._pending.pop(int(message["id"]), None)
                    if future is None:
                        continue
                    if "pid" in message:
                        future.set_result(int(message["pid"]))
                    else:
                        future.set_exception(ForkServerError(str(message.get("error"))))
        with self._lock:
            self._alive = False
            failure = ForkServerError(
                f"the fork server exited (code {self._process.poll()}) before replying"
            )
            if not self._ready.done():
                log.warning("%s; kernels for %s start the usual way", failure, self.python)
                self._ready.set_exception(failure)
            for future in self._pending.values():
                future.set_exception(failure)
            self._pending.clear()

    async def fork(self, argv: list[str], cwd: str, env: dict[str, str]) -> int:
        """Fork a kernel with these arguments, working folder and environment; its pid."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        # A pipe write can block (a busy server, a full pipe): never on the event loop.
        await asyncio.to_thread(self._send, {"argv": argv, "cwd": cwd, "env": env}, future)
        return await asyncio.wrap_future(future)

    def fork_blocking(self, argv: list[str], cwd: str, env: dict[str, str], timeout: float) -> int:
        """``fork`` for a thread of its own: waits up to ``timeout`` seconds for the pid.

        Raises:
            ForkServerError: The server is gone, or could not fork.
            concurrent.futures.TimeoutError: No answer within ``timeout``.
        """
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._send({"argv": argv, "cwd": cwd, "env": env}, future)
        return future.result(timeout)

    def _send(self, request: dict[str, Any], future: concurrent.futures.Future[int]) -> None:
        with self._lock:
            if not self._alive:
                raise ForkServerError("the fork server is not running")
            request_id = next(self._ids)
            self._pending[request_id] = future
            line = json.dumps({"id": request_id, **request}) + "\n"
            try:
                self._stdin.write(line.encode())
                self._stdin.flush()
            except OSError as error:
                self._pending.pop(request_id, None)
                raise ForkServerError(f"the fork server is gone: {error}") from error

    def exit_status(self, pid: int) -> int | None:
        """How kernel ``pid`` ended (negative: the signal), or None while it runs."""
        with self._lock:
            if pid in self._exits:
                return self._exits[pid]
            alive = self._alive
        if alive:
            return None
        # the server is gone and cannot tell: ask the system (an unreaped zombie is gone too)
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        return -int(signal.SIGKILL)

    def forget(self, pid: int) -> None:
        with self._lock:
            self._exits.pop(pid, None)

    def close(self) -> None:
        """Close the server's stdin: it stops its kernels and exits."""
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()


@dataclass
class Ahead:
    """A kernel forked before any run asked for it (``ForkServers(ahead=True)``): its
    connection file and IPC sockets are in ``folder``, which is also its working folder
    until the run that takes it moves it to its own."""

    server: ForkServer
    pid: int
    info: KernelConnectionInfo
    argv: list[str]  # with CONNECTION_FILE where its connection file goes
    env: dict[str, str]
    folder: Path

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


CONNECTION_FILE = "{connection_file}"


class ForkServers:
    """The fork servers of one owner (a ``LocalExecutor``): one per kernel Python.

    A server starts on first use and is replaced if it dies after it was ready; one
    that never got ready (the interpreter cannot import ipykernel, say) is not
    retried, and its kernels spawn. ``close`` stops every server and the kernels they
    still run; it also runs at interpreter exit.

    With ``ahead``, each kernel forked for a run has the next one forked at once, in
    the background: the next run of the same kernel spec and environment takes it
    already started (its ~0.15 s start is off that run's path), is moved to its own
    folder, and has the next one forked in turn. For an owner without a kernel pool
    (``process_executor``, whose runs each have their own event loop: a kernel that is
    already connected belongs to one).

    Example:
        >>> servers = ForkServers(preload=("numpy",))
        >>> with forking_with(servers):
        ...     kc = await start_kernel(new_kernel_manager("python3", ipc), cwd)
        >>> servers.close()
    """

    def __init__(self, preload: tuple[str, ...] = (), *, ahead: bool = False) -> None:
        self.preload = preload
        self.ahead = ahead
        self._ahead: dict[str, Ahead] = {}  # by python
        self._forking_ahead: set[str] = set()
        self._servers: dict[str, ForkServer] = {}
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)

    def _server_for(self, python: str, env: dict[str, str]) -> ForkServer | None:
        with self._lock:
            if self._closed:
                return None
            server = self._servers.get(python)
            if server is None or (not server.alive and server.was_ready):
                server = ForkServer(python, env, self.preload)
                self._servers[python] = server
        return server

    def wait_for(self, python: str, env: dict[str, str]) -> ForkServer:
        """The running fork server for ``python``, started (and waited for) on first use.

        Raises:
            ForkServerError: These servers are closed, or the server did not start.
        """
        server = self._server_for(python, env)
        if server is None:
            raise ForkServerError("the fork servers are closed")
        server.wait_ready()
        return server

    def ready(self, python: str, env: dict[str, str]) -> ForkServer | None:
        """The fork server for ``python`` if it is ready; else start it and return None.

        The server takes a second or two to import ipykernel: the kernels asked for
        meanwhile start the usual way rather than wait for it, so an owner that runs
        one notebook pays nothing for it.
        """
        server = self._server_for(python, env)
        return server if server is not None and server.ready else None

    def take_ahead(self, server: ForkServer, argv: list[str], env: dict[str, str]) -> Ahead | None:
        """The kernel forked ahead by ``server`` for exactly these arguments and this
        environment, if it is still running; one for others is stopped."""
        with self._lock:
            ahead = self._ahead.pop(server.python, None)
        if ahead is None:
            return None
        if (
            ahead.server is server
            and ahead.argv == argv
            and ahead.env == env
            and server.exit_status(ahead.pid) is None
        ):
            return ahead
        ahead.discard()
        return None

    def fork_ahead(self, server: ForkServer, argv: list[str], env: dict[str, str]) -> None:
        """Fork the next kernel for these arguments and environment, in the background
        (a thread: not tied to the event loop of the run that asked)."""
        with self._lock:
            if not self.ahead or self._closed or server.python in self._forking_ahead:
                return
            if server.python in self._ahead:
                return
            self._forking_ahead.add(server.python)
        threading.Thread(
            target=self._fork_ahead, args=(server, argv, env), name="nbjobs-fork-ahead", daemon=True
        ).start()

    def _fork_ahead(self, server: ForkServer, argv: list[str], env: dict[str, str]) -> None:
        folder = Path(tempfile.mkdtemp(prefix="nbjobs-ahead-"))
        try:
            path, info = write_connection_file(
                str(folder / "kernel.json"),
                transport="ipc",
                ip=str(folder / "k"),
                key=str(uuid.uuid4()).encode(),
            )
            # the key as bytes, as a kernel manager holds it (its TypedDict says str)
            info["key"] = str(info["key"]).encode()  # type: ignore[typeddict-item]
            pid = server.fork_blocking(
                [arg.replace(CONNECTION_FILE, path) for arg in argv],
                str(folder),
                env,
                FORK_SERVER_STARTUP_TIMEOUT_SECONDS,
            )
        except Exception as error:  # the next run forks its own, as without this
            log.warning("could not fork a kernel ahead: %s", error)
            shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self._forking_ahead.discard(server.python)
            return
        ahead = Ahead(server, pid, info, argv, env, folder)
        with self._lock:
            self._forking_ahead.discard(server.python)
            if self._closed:
                ahead.discard()
                return
            previous = self._ahead.pop(server.python, None)
            self._ahead[server.python] = ahead
        if previous is not None:
            previous.discard()

    def close(self) -> None:
        """Stop every fork server (and the kernels they still run); no new ones start."""
        with self._lock:
            self._closed = True
            servers = list(self._servers.values())
            self._servers.clear()
            aheads = list(self._ahead.values())
            self._ahead.clear()
        for ahead in aheads:
            ahead.discard()
        for server in servers:
            server.close()
        atexit.unregister(self.close)
