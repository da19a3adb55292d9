"""Forked kernels: a jupyter_client kernel provisioner backed by a fork server.

A fresh ipykernel spends about half a second of CPU importing IPython before it can
run a cell. ``ForkingProvisioner`` asks a fork server (``tasks/engine/kernels/forkserver.py``,
run by the kernelspec's own Python, which has imported ipykernel once) to fork each
kernel instead: every kernel is still a new process, used by one run and shut down
after it, with its own working folder and environment, but it costs a fraction of the
CPU and memory to start.

It is a kernel provisioner (jupyter_client's plug-in point for how kernels are
launched), registered as the entry point ``nbjobs-fork``: nbclient, interrupts,
``is_alive`` and shutdown work as with any kernel. Kernelspecs it cannot fork (not
``python -m ipykernel_launcher``) are launched the usual way.

The fork servers have an owner: a ``ForkServers`` (one per ``LocalExecutor``), made
current for the kernels it starts with ``forking_with(servers)``, a ``ContextVar``.
Where none is current (a Slurm job, a process that runs one notebook) kernels spawn
as usual. ``NBJOBS_KERNEL_LAUNCHER=spawn`` gives a worker no fork servers;
``NBJOBS_KERNEL_PRELOAD=numpy,pandas`` has its fork servers import those modules once
for every kernel.
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
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
from jupyter_client.connect import KernelConnectionInfo, write_connection_file
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

PROVISIONER_NAME = "nbjobs-fork"
FORK_SERVER_SCRIPT = Path(__file__).with_name("forkserver.py")
FORK_SERVER_STARTUP_TIMEOUT_SECONDS = 60
EXIT_POLL_INTERVAL_SECONDS = 0.05
KILL_POLL_SECONDS = 0.005  # after SIGKILL: the process is gone within milliseconds
KILL_WAIT_SECONDS = 1.0  # then jupyter_client's own wait takes over

log = logging.getLogger("nbjobs.kernel_fork")


class ForkServerError(RuntimeError):
    """The fork server could not be started or could not fork a kernel."""


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
            future: concurrent.futures.Future[int] = concurrent.futures.Future()
            server._send(
                {
                    "argv": [arg.replace(CONNECTION_FILE, path) for arg in argv],
                    "cwd": str(folder),
                    "env": env,
                },
                future,
            )
            pid = future.result(FORK_SERVER_STARTUP_TIMEOUT_SECONDS)
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


current_fork_servers: ContextVar[ForkServers | None] = ContextVar(
    "nbjobs_fork_servers", default=None
)


@contextlib.contextmanager
def forking_with(servers: ForkServers | None) -> Iterator[None]:
    """Kernels started in this block (in this task) fork from ``servers`` (None: spawn)."""
    token = current_fork_servers.set(servers)
    try:
        yield
    finally:
        current_fork_servers.reset(token)


class ForkingProvisioner(LocalProvisioner):
    """A kernel provisioner that forks ipykernel kernels from a warm fork server.

    Falls back to the local provisioner (a new process from scratch) for kernels it
    cannot fork, when no ``ForkServers`` is current, or when the fork server fails.
    """

    _server: ForkServer | None = None
    _forked: int | None = None
    # a kernel forked ahead started in this folder: whoever connects moves it to ``cwd``
    moved_from: Path | None = None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        servers = current_fork_servers.get()
        plan = fork_plan(cmd) if servers is not None else None
        if servers is None or plan is None:
            return await super().launch_kernel(cmd, **kwargs)
        python, argv = plan
        env = dict(kwargs.get("env") or os.environ)
        cwd = str(kwargs.get("cwd") or Path.cwd())
        server = servers.ready(python, env)
        if server is None:
            return await super().launch_kernel(cmd, **kwargs)
        connection_file = str(getattr(self.parent, "connection_file", "") or "\0")
        template = [arg.replace(connection_file, CONNECTION_FILE) for arg in argv]
        ahead = servers.take_ahead(server, template, env)
        if ahead is not None:  # started already: the kernel manager takes its connection
            pid = ahead.pid
            self.connection_info = ahead.info
            self.moved_from = ahead.folder
        else:
            try:
                pid = await server.fork(argv, cwd, env)
            except ForkServerError as error:
                log.warning("forking a kernel failed (%s); starting it the usual way", error)
                return await super().launch_kernel(cmd, **kwargs)
        servers.fork_ahead(server, template, env)
        self._server, self._forked = server, pid
        self.pid = self.pgid = pid  # the child called setsid(): its pid is its group
        self.cwd = cwd
        return self.connection_info

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart)
        if self.moved_from is not None:  # a kernel forked ahead: its connection's folder
            await asyncio.to_thread(shutil.rmtree, self.moved_from, True)
            self.moved_from = None

    @property
    def has_process(self) -> bool:
        return self._forked is not None or bool(super().has_process)

    async def poll(self) -> int | None:
        if self._server is None or self._forked is None:
            return await super().poll()
        return self._server.exit_status(self._forked)

    async def wait(self) -> int | None:
        if self._server is None or self._forked is None:
            return await super().wait()
        while (status := await self.poll()) is None:
            await asyncio.sleep(EXIT_POLL_INTERVAL_SECONDS)
        self._server.forget(self._forked)
        self._forked = None  # has_process is False from here on, as after Popen.wait
        return status

    async def send_signal(self, signum: int) -> None:
        if self._forked is None:
            return await super().send_signal(signum)
        try:
            os.killpg(self._forked, signum)
        except OSError:
            os.kill(self._forked, signum)

    async def kill(self, restart: bool = False) -> None:
        if self._forked is None:
            await super().kill(restart)
        else:
            with contextlib.suppress(ProcessLookupError):
                await self.send_signal(signal.SIGKILL)
        # jupyter_client asks whether the kernel is gone every 0.1 s after a kill: a
        # run's end would wait that long for what takes a few milliseconds
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while await self.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(KILL_POLL_SECONDS)

    async def terminate(self, restart: bool = False) -> None:
        if self._forked is None:
            return await super().terminate(restart)
        with contextlib.suppress(ProcessLookupError):
            await self.send_signal(signal.SIGTERM)


def use_forking_provisioner(kernel_spec: Any) -> None:
    """Have a kernel manager's spec launch through ``ForkingProvisioner``.

    Only when a ``ForkServers`` is current and the spec names no provisioner of its own.
    """
    if current_fork_servers.get() is None:
        return
    metadata = kernel_spec.metadata
    if "kernel_provisioner" not in metadata:
        metadata["kernel_provisioner"] = {"provisioner_name": PROVISIONER_NAME, "config": {}}
