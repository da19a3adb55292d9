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
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from notebook_jobs.blocks.exceptions import ForkServerError
from notebook_jobs.tasks.engine.kernels.fork_servers import (
    CONNECTION_FILE,
    ForkServer,
    ForkServers,
    fork_plan,
    log,
)

__all__ = [
    "ForkServer",
    "ForkServers",
    "ForkingProvisioner",
    "fork_plan",
    "forking_with",
    "use_forking_provisioner",
]

PROVISIONER_NAME = "nbjobs-fork"
EXIT_POLL_INTERVAL_SECONDS = 0.05
KILL_POLL_SECONDS = 0.005  # after SIGKILL: the process is gone within milliseconds
KILL_WAIT_SECONDS = 1.0  # then jupyter_client's own wait takes over


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
        # A kernel already gone hears nothing, and that is no error, as for a spawned
        # one (Popen ignores a signal once it has reaped its child). jupyter_client
        # interrupts a kernel as it shuts it down: for a forked kernel that had died,
        # ProcessLookupError broke off the shutdown and went to the log as a traceback.
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(self._forked, signum)
            except OSError:
                os.kill(self._forked, signum)

    async def kill(self, restart: bool = False) -> None:
        if self._forked is None:
            await super().kill(restart)
        else:
            await self.send_signal(signal.SIGKILL)
        # jupyter_client asks whether the kernel is gone every 0.1 s after a kill: a
        # run's end would wait that long for what takes a few milliseconds
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while await self.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(KILL_POLL_SECONDS)

    async def terminate(self, restart: bool = False) -> None:
        if self._forked is None:
            return await super().terminate(restart)
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
