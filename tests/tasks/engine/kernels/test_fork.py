"""Forked kernels: the same kernel as a spawned one, for a fraction of the start cost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from notebook_jobs.tasks.engine.kernels.client import (
    StartedKernel,
    kernel_environment,
    kernel_pid,
    new_kernel_manager,
    shutdown_kernel,
    start_kernel,
)
from notebook_jobs.tasks.engine.kernels.fork import (
    ForkingProvisioner,
    ForkServers,
    fork_plan,
    forking_with,
)

PROBE = (
    "import json, os, sys\n"
    "os.write(1, b'from fd 1\\n')\n"
    "import time; time.sleep(0.3)  # fd output is forwarded by a watcher thread\n"
    "print(json.dumps({'path': sys.path, 'cwd': os.getcwd(), 'env': sorted(os.environ),"
    " 'pid': os.getpid(), 'pgid': os.getpgid(0), 'argv0': sys.argv[0],"
    " 'main': sorted(k for k in vars(sys.modules['__main__']) if not k.startswith('_'))}))"
)
# differs by design: who the parent is
ENV_EXPECTED_TO_DIFFER = {"JPY_PARENT_PID"}


@pytest.fixture(scope="module")
def servers() -> Iterator[ForkServers]:
    owned = ForkServers()
    yield owned
    owned.close()


async def started(servers: ForkServers | None, cwd: Path) -> StartedKernel:
    """A kernel forked from ``servers`` (once ready), or spawned when None."""
    if servers is not None:  # kernels are forked once the server is ready: wait for it
        await asyncio.to_thread(servers.wait_for, sys.executable, kernel_environment())
    with forking_with(servers):
        km = new_kernel_manager("python3", Path(tempfile.mkdtemp(prefix="nbjobs-t-")) / "k")
        return StartedKernel(km, await start_kernel(km, cwd))


async def run(kernel: StartedKernel, code: str, timeout: float = 30) -> tuple[dict[str, Any], str]:
    text: list[str] = []

    def hook(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream":
            text.append(message["content"]["text"])

    reply = await kernel.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"], "".join(text)


def json_line(text: str) -> dict[str, Any]:
    return dict(json.loads(next(line for line in text.splitlines() if line.startswith("{"))))


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def stop(kernel: StartedKernel) -> None:
    await shutdown_kernel(kernel.km, kernel.kc)


def test_fork_plan_accepts_ipykernel_commands_only() -> None:
    python = sys.executable
    assert fork_plan([python, "-m", "ipykernel_launcher", "-f", "/k.json"]) == (
        python,
        ["-f", "/k.json"],
    )
    assert fork_plan([python, "-m", "ipykernel", "-f", "/k.json", "--x=1"]) == (
        python,
        ["-f", "/k.json", "--x=1"],
    )
    # interpreter options would be lost by forking: such specs start the usual way
    assert fork_plan([python, "-X", "frozen_modules=off", "-m", "ipykernel_launcher"]) is None
    assert fork_plan(["julia", "-i", "kernel.jl", "{connection_file}"]) is None
    assert fork_plan(["/no/such/python", "-m", "ipykernel_launcher", "-f", "k"]) is None


def test_a_forked_kernel_looks_like_a_spawned_one(tmp_path: Path, servers: ForkServers) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str, str]:
        spawned = await started(None, tmp_path)
        forked = await started(servers, tmp_path)
        try:
            _, spawned_out = await run(spawned, PROBE)
            _, forked_out = await run(forked, PROBE)
            # output written to the file descriptor (C code, subprocesses) is kept too
            for out in (spawned_out, forked_out):
                assert "from fd 1" in out
            kinds = type(spawned.km.provisioner).__name__, type(forked.km.provisioner).__name__
        finally:
            await asyncio.gather(stop(spawned), stop(forked))
        return json_line(spawned_out), json_line(forked_out), *kinds

    spawned, forked, spawned_kind, forked_kind = asyncio.run(scenario())
    assert (spawned_kind, forked_kind) == ("LocalProvisioner", "ForkingProvisioner")
    assert forked["path"] == spawned["path"]  # nothing of the fork server's sys.path
    assert forked["cwd"] == spawned["cwd"] == str(tmp_path)
    assert set(forked["env"]) - ENV_EXPECTED_TO_DIFFER == set(spawned["env"]) - (
        ENV_EXPECTED_TO_DIFFER
    )
    assert forked["main"] == spawned["main"]  # an empty namespace, as in any new kernel
    assert forked["pid"] == forked["pgid"]  # its own process group, for signals


def test_forked_kernels_are_interrupted_and_killed_like_any_other(
    tmp_path: Path, servers: ForkServers
) -> None:
    async def scenario() -> tuple[dict[str, Any], int | None]:
        kernel = await started(servers, tmp_path)
        assert isinstance(kernel.km.provisioner, ForkingProvisioner)
        try:
            asyncio.get_running_loop().call_later(1.0, asyncio.ensure_future, interrupt(kernel))
            content, _ = await run(kernel, "import time; time.sleep(60)")
            await kernel.km.provisioner.kill()
            code = await asyncio.wait_for(kernel.km.provisioner.wait(), 10)
        finally:
            kernel.kc.stop_channels()
        return content, code

    async def interrupt(kernel: StartedKernel) -> None:
        await kernel.km.interrupt_kernel()

    content, code = asyncio.run(scenario())
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt"
    assert code == -signal.SIGKILL  # reported by the fork server, as Popen would


def test_a_forked_kernel_that_died_shuts_down_without_an_error(
    tmp_path: Path, servers: ForkServers, caplog: pytest.LogCaptureFixture
) -> None:
    """jupyter_client interrupts a kernel as it shuts it down. For a forked kernel
    killed mid-run (the soak kills one), the interrupt raised ProcessLookupError: the
    worker logged a traceback and the shutdown stopped before the fork server forgot
    the kernel."""

    async def scenario() -> None:
        kernel = await started(servers, tmp_path)
        pid = kernel_pid(kernel)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # gone, and reaped by its fork server
        assert not psutil.pid_exists(pid)
        await shutdown_kernel(kernel.km, kernel.kc)
        assert not kernel.km.has_kernel  # the whole shutdown ran: the kernel was waited for

    with caplog.at_level("ERROR"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def test_kernels_do_not_outlive_their_fork_server(tmp_path: Path) -> None:
    servers = ForkServers()

    async def scenario() -> tuple[int, int, int]:
        kernel = await started(servers, tmp_path)
        server = servers.wait_for(sys.executable, dict(os.environ))
        assert psutil.Process(kernel.km.provisioner.pid).ppid() == server.pid
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while running(kernel.km.provisioner.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        gone = not await kernel.km.is_alive()
        kernel.kc.stop_channels()
        # the next kernel gets a new fork server
        replacement = await started(servers, tmp_path)
        new_server = servers.wait_for(sys.executable, dict(os.environ))
        await stop(replacement)
        return int(gone), server.pid, new_server.pid

    try:
        gone, old_pid, new_pid = asyncio.run(scenario())
    finally:
        servers.close()
    assert gone and new_pid != old_pid


def test_closing_the_fork_servers_stops_their_kernels(tmp_path: Path) -> None:
    servers = ForkServers()

    async def scenario() -> int:
        kernel = await started(servers, tmp_path)
        pid = kernel.km.provisioner.pid
        kernel.kc.stop_channels()
        return int(pid)

    pid = asyncio.run(scenario())
    assert running(pid)
    servers.close()
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(pid)


def test_kernels_do_not_wait_for_a_fork_server_that_is_still_starting(tmp_path: Path) -> None:
    servers = ForkServers()

    async def scenario() -> tuple[int, int, int]:
        with forking_with(servers):
            km = new_kernel_manager("python3", tmp_path / "k1")
            first = StartedKernel(km, await start_kernel(km, tmp_path))  # the server starts
            server = await asyncio.to_thread(servers.wait_for, sys.executable, kernel_environment())
            km = new_kernel_manager("python3", tmp_path / "k2")
            second = StartedKernel(km, await start_kernel(km, tmp_path))
        parents = [psutil.Process(k.km.provisioner.pid).ppid() for k in (first, second)]
        await asyncio.gather(stop(first), stop(second))
        return parents[0], parents[1], server.pid

    try:
        first_parent, second_parent, server_pid = asyncio.run(scenario())
    finally:
        servers.close()
    assert first_parent == os.getpid()  # spawned as usual while the server was starting
    assert second_parent == server_pid  # forked once it was ready


def test_a_kernel_forked_ahead_is_the_next_runs_moved_to_its_folder(tmp_path: Path) -> None:
    """``ForkServers(ahead=True)``: each run's kernel has the next one forked at once;
    the next run (same spec and environment) takes it started, in its own folder, in
    its own event loop; another environment gets a kernel of its own, and nothing forked
    ahead outlives ``close``."""
    owned = ForkServers(ahead=True)

    def one(cwd: Path, env: dict[str, str] | None = None) -> tuple[dict[str, Any], bool]:
        async def go() -> tuple[dict[str, Any], bool]:
            with forking_with(owned):
                km = new_kernel_manager("python3", Path(tempfile.mkdtemp(prefix="nbjobs-t-")) / "k")
                kc = await start_kernel(km, cwd, environment=env)
            kernel = StartedKernel(km, kc)
            adopted = getattr(km.provisioner, "moved_from", None) is not None
            try:
                _, text = await run(kernel, PROBE)
            finally:
                await shutdown_kernel(km, kc)
            return json_line(text), adopted

        cwd.mkdir()
        return asyncio.run(go())  # each run in an event loop of its own, as a script's

    try:
        owned.wait_for(sys.executable, kernel_environment())
        first, adopted = one(tmp_path / "first")
        assert not adopted and first["cwd"] == str(tmp_path / "first")
        deadline = time.monotonic() + 30
        while not owned._ahead and time.monotonic() < deadline:  # forked in the background
            time.sleep(0.05)
        ahead = next(iter(owned._ahead.values()))
        second, adopted = one(tmp_path / "second")
        assert adopted and second["pid"] == ahead.pid
        assert second["cwd"] == str(tmp_path / "second")
        assert not ahead.folder.exists()  # its connection file and sockets, gone with it
        other, adopted = one(tmp_path / "other", {"NBJOBS_TEST_OTHER": "1"})
        assert not adopted and "NBJOBS_TEST_OTHER" in other["env"]
        assert "NBJOBS_TEST_OTHER" not in second["env"]
        while not owned._ahead and time.monotonic() < deadline:
            time.sleep(0.05)
        left = next(iter(owned._ahead.values()))
    finally:
        owned.close()
    deadline = time.monotonic() + 10
    while running(left.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(left.pid) and not left.folder.exists()
