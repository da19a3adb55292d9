"""The kernel pool: a fresh kernel for every run, none leaked, clean on cancellation."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from notebook_jobs.blocks.exceptions import RunCancelledError, UnknownKernelError
from notebook_jobs.tasks.engine.execution import execute_notebook_async
from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
from notebook_jobs.tasks.engine.kernels.client import (
    new_kernel_manager,
    shutdown_kernel,
    start_kernel,
)
from notebook_jobs.tasks.engine.kernels.pool import KernelPool
from notebook_jobs.tasks.engine.staging import inject_parameters
from notebook_jobs.tasks.executors import LocalExecutor
from notebook_jobs.tasks.models import ExecutionOutcome, ExecutionReport
from notebook_jobs.tasks.runtime import using_executor
from tests.conftest import DATA, state_outcome

IDENTITY = DATA / "hostile" / "kernel_identity.ipynb"


def kernel_processes() -> set[int]:
    """Running kernels started by this test process: spawned, or forked by a fork server."""
    found = set()
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(process.cmdline())
            parent = process.parent()
            forked = parent is not None and "kernels/forkserver.py" in " ".join(parent.cmdline())
            if "ipykernel" in command or forked:
                found.add(process.pid)
        except psutil.Error:  # gone, or a zombie: not a running kernel
            pass
    return found


async def run_on(
    pool: KernelPool, workdir: Path, parameters: dict[str, object]
) -> dict[str, object]:
    nb = parse_notebook(fetch_notebook_source(str(IDENTITY)))
    nb, origin = inject_parameters(nb, parameters, "python3")
    report = await execute_notebook_async(
        nb, origin, kernel="python3", workdir=workdir, started=await pool.acquire()
    )
    assert report.status == "completed", report.error
    return report.outputs


def test_every_run_gets_a_fresh_kernel_in_its_own_folder(tmp_path: Path) -> None:
    async def scenario() -> list[dict[str, object]]:
        pool = KernelPool("python3", size=2)
        try:
            return [await run_on(pool, tmp_path / f"run{i}", {"leak": True}) for i in range(4)]
        finally:
            await pool.close()

    outputs = asyncio.run(scenario())
    assert len({o["pid"] for o in outputs}) == 4  # four runs, four kernels
    assert not any(o["saw_leftover"] for o in outputs)  # no state from an earlier run
    assert [o["cwd"] for o in outputs] == [str(tmp_path / f"run{i}") for i in range(4)]


def test_no_kernel_is_left_behind_after_concurrent_runs(tmp_path: Path) -> None:
    before = kernel_processes()

    async def scenario() -> None:
        pool = KernelPool("python3", size=2)
        try:
            await asyncio.gather(*(run_on(pool, tmp_path / f"r{i}", {}) for i in range(6)))
        finally:
            await pool.close()
        await asyncio.sleep(0.5)  # kernels of finished runs are stopped in the background

    asyncio.run(scenario())
    assert kernel_processes() - before == set()


def test_cancelling_a_run_on_a_pooled_kernel_stops_it_and_closing_the_pool_stops_the_rest(
    tmp_path: Path,
) -> None:
    before = kernel_processes()

    async def scenario() -> RunCancelledError:
        pool = KernelPool("python3", size=2)
        nb = parse_notebook(fetch_notebook_source(str(DATA / "sleeps.ipynb")))
        nb, origin = inject_parameters(nb, {"seconds": 600}, "python3")
        started = await pool.acquire()
        run = asyncio.ensure_future(
            execute_notebook_async(nb, origin, kernel="python3", workdir=tmp_path, started=started)
        )
        await asyncio.sleep(2)
        run.cancel()
        try:
            await run
        except RunCancelledError as stop:
            await pool.close()
            return stop
        raise AssertionError("the run was not cancelled")

    stop = asyncio.run(scenario())
    report: ExecutionReport = ExecutionOutcome.model_validate(stop.execution).report
    assert report.status == "cancelled" and report.error is not None
    assert report.error.cell_index == stop.cell_index == 2
    assert kernel_processes() - before == set()


def test_a_pool_for_a_kernel_that_is_not_installed_is_refused() -> None:
    with pytest.raises(UnknownKernelError):
        KernelPool("no-such-kernel", 1)


@pytest.fixture
def broken_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed kernel spec whose kernel exits at once (a broken environment)."""
    spec = tmp_path / "jupyter" / "kernels" / "broken"
    spec.mkdir(parents=True)
    argv = ["/bin/sh", "-c", "echo 'no such module' >&2; exit 3", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Broken", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "broken"


def test_a_pool_that_cannot_start_kernels_says_so_and_hands_the_run_none(
    broken_kernel: str, caplog: pytest.LogCaptureFixture
) -> None:
    """It used to swallow the failure and keep the run waiting for ever."""

    async def scenario() -> tuple[object, int]:
        pool = KernelPool(broken_kernel, size=1)
        try:
            return await asyncio.wait_for(pool.acquire(), 60), pool.failed
        finally:
            await pool.close()

    started, failed = asyncio.run(scenario())
    assert started is None and failed >= 1
    assert "could not start a 'broken' kernel: the kernel died before answering" in caplog.text


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_kernel_that_dies_at_once_leaves_no_thread_behind(
    broken_kernel: str, tmp_path: Path
) -> None:
    """jupyter_client's heartbeat thread, stopped as it started, spun opening sockets
    until ZeroMQ raised "Too many open files" in it (4 of 9 such starts, here); a client
    now runs no heartbeat (its kernel manager knows whether the kernel lives)."""

    async def starts() -> None:
        for attempt in range(5):
            km = new_kernel_manager(broken_kernel, tmp_path / f"k{attempt}")
            with pytest.raises(RuntimeError, match="the kernel died before answering"):
                await start_kernel(km, tmp_path)
            await shutdown_kernel(km, None)

    before = threading.active_count()
    asyncio.run(starts())
    assert threading.active_count() <= before


@pytest.mark.usefixtures("prefect_server")
def test_a_run_on_a_broken_pool_ends_with_the_reason_and_its_notebook(
    broken_kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from notebook_jobs.flows.run_notebook import run_notebook

    monkeypatch.setenv("NBJOBS_KERNEL_RETRIES", "0")

    async def scenario() -> object:
        async with LocalExecutor(pool_size=1) as executor:
            with using_executor(executor):
                return await run_notebook(
                    notebook=str(DATA / "params.ipynb"),
                    kernel=broken_kernel,
                    store=str(tmp_path / "s"),
                    return_state=True,
                )

    state: Any = asyncio.run(scenario())
    assert state.is_failed()
    assert "the kernel 'broken' failed to start: the kernel died before answering" in (
        state.message or ""
    )
    result = state_outcome(state).result
    assert result["status"] == "kernel_died"
    assert Path(result["artefacts"]["notebook"]).exists()  # the unrun notebook, kept


def test_an_executor_owns_its_pools_and_keeps_them_to_one_event_loop(tmp_path: Path) -> None:
    """Pools were found by ``id(loop)``, which CPython reuses: a second ``asyncio.run``
    could pick up the first loop's pool, whose queue and clients belonged to a dead loop."""
    before = kernel_processes()
    executor = LocalExecutor(pool_size=1)

    async def first() -> tuple[KernelPool, dict[str, object]]:
        pool = executor.pool("python3")
        assert pool is not None
        outputs = await run_on(pool, tmp_path / "a", {})
        # a batch's executor borrows the fork servers; closing it leaves ours running
        async with LocalExecutor(pool_size=1, fork_servers=executor.fork_servers) as batch:
            assert batch.pool("python3") is not pool
        assert not pool.closed
        return pool, outputs  # the loop ends with its pool still open

    async def on_another_loop() -> None:
        executor.pool("python3")

    pool, outputs = asyncio.run(first())
    try:
        with pytest.raises(RuntimeError, match="belong to another event loop"):
            asyncio.run(on_another_loop())
    finally:
        asyncio.run(executor.close())
    assert pool.started >= 1 and outputs["cwd"] == str(tmp_path / "a")
    deadline = time.monotonic() + 15
    while kernel_processes() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kernel_processes() - before == set()
