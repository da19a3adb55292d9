"""Repairs, apart from a worker: the request a batch item carries, and the kept kernels'
bounds (real repairs through the local server: tests/deployments/test_local_server.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nbformat
import pytest

from notebook_jobs.flows.run_notebook import flow_arguments, run_request
from notebook_jobs.tasks.engine.kernels.kept import KeptKernel, KernelKeeper
from notebook_jobs.tasks.models import NotebookRequest

pytestmark = pytest.mark.unit


def test_a_request_goes_through_the_flows_arguments_unchanged() -> None:
    request = NotebookRequest(
        notebook="report.ipynb",
        parameters={"n": 3},
        memory_limit_bytes=300 * 1024 * 1024,
        keep_failed_kernel_seconds=600,
        repair_of="0b6f",
        from_cell=2,
    )
    assert run_request(flow_arguments(request), None) == request
    bare = NotebookRequest(notebook="report.ipynb", keep_failed_kernel_seconds=0)
    assert run_request(flow_arguments(bare), None) == bare


class Manager:
    """A kernel manager that records its shutdown (the keeper's seam to a kernel)."""

    def __init__(self, ended: list[str], name: str) -> None:
        self.ended, self.name, self.has_kernel = ended, name, True

    async def shutdown_kernel(self, now: bool = False) -> None:
        self.ended.append(self.name)


def kept(tmp_path: Path, ended: list[str], name: str) -> KeptKernel:
    client: Any = SimpleNamespace(stop_channels=lambda: None)
    return KeptKernel(
        started=SimpleNamespace(km=Manager(ended, name), kc=client),  # type: ignore[arg-type]
        kernel="python3",
        workdir=tmp_path,
        notebook=nbformat.v4.new_notebook(),
        ipc_dir=tmp_path / f"ipc-{name}",
    )


def test_the_keeper_holds_at_most_its_count_and_lets_go_when_the_time_is_up(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[list[str], list[str], bool]:
        ended: list[str] = []
        keeper = KernelKeeper(seconds=0.3, count=2)
        for name in ("a", "b", "c"):  # the third makes the oldest go
            assert keeper.keep(name, kept(tmp_path, ended, name))
        await asyncio.sleep(0.05)
        first = list(ended)
        taken = keeper.take("b", "python3") is not None and keeper.take("c", "python2") is None
        await asyncio.sleep(0.5)  # c's time is up
        await keeper.close()
        return first, ended, taken

    first, ended, taken = asyncio.run(main())
    assert first == ["a"] and taken
    assert ended == ["a", "c"]  # b was taken: its repair ends it


def test_the_keeper_refuses_past_its_memory_or_with_no_time(tmp_path: Path) -> None:
    async def main() -> list[bool]:
        ended: list[str] = []
        one = kept(tmp_path, ended, "a")
        small = KernelKeeper(seconds=60, memory_bytes=-1)  # every kernel is too big
        off = KernelKeeper(seconds=0)
        results = [small.keep("a", one), off.keep("a", one), off.keep("a", one, seconds=60)]
        await off.close()
        return results

    assert asyncio.run(main()) == [False, False, True]
