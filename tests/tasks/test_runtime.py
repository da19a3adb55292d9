"""One runtime object per process that runs notebooks, handed down, never found globally."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
from pathlib import Path

import pytest

from notebook_jobs.blocks.store import open_store
from notebook_jobs.tasks.runtime import (
    NO_RUNTIME,
    Runtime,
    current_executor,
    current_runtime,
    using_executor,
    using_runtime,
)

pytestmark = pytest.mark.unit


def test_outside_any_runtime_a_run_sees_an_empty_one() -> None:
    # a context of its own: the suite's session runs everything inside a runtime
    assert contextvars.Context().run(current_runtime) is NO_RUNTIME
    assert (NO_RUNTIME.executor, NO_RUNTIME.cell_sinks, NO_RUNTIME.files_url) == (None, (), None)


def test_the_runtime_reaches_tasks_and_threads_started_inside_and_ends_with_its_block() -> None:
    heard: list[str] = []
    runtime = Runtime(cell_sinks=(heard.append,))

    async def in_a_task() -> Runtime:
        return current_runtime()

    async def main() -> tuple[Runtime, Runtime]:
        with using_runtime(runtime):
            task = asyncio.ensure_future(in_a_task())
            thread = asyncio.to_thread(current_runtime)
            return await task, await thread

    before = current_runtime()
    seen = asyncio.run(main())
    assert seen == (runtime, runtime)
    assert current_runtime() is before
    for sink in seen[0].cell_sinks:
        sink("cell 1")
    assert heard == ["cell 1"]


def test_an_executor_of_its_own_keeps_the_rest_of_the_runtime() -> None:
    runtime = Runtime(result_sinks=(print,), files_url="http://127.0.0.1:4280")
    executor, before = object(), current_executor()
    with using_runtime(runtime), using_executor(executor):  # type: ignore[arg-type]
        assert current_executor() is executor
        assert current_runtime().result_sinks == (print,)
        assert current_runtime().files_url == "http://127.0.0.1:4280"
    assert current_executor() is before


def test_local_store_links_point_at_the_runtimes_file_server(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    assert store.link("run/result.json").startswith("file://")
    with using_runtime(Runtime(files_url="http://127.0.0.1:4281")):
        link = store.link("run/result.json")
    assert link.startswith("http://127.0.0.1:4281/files/") and link.endswith("/run/result.json")


PROCESS_WIDE = """
import logging, ssl
import prefect.client.orchestration as orchestration
import notebook_jobs.flows.run_notebook  # the flow: importing it changes nothing
from notebook_jobs.tasks.runtime import Runtime, using_runtime

def seen():
    filters = logging.getLogger("prefect.flow_runs").filters
    return [len(filters), orchestration.ssl is not ssl]

print(seen())
with using_runtime(Runtime(shared_tls=True)):
    print(seen())
    with using_runtime(Runtime()):  # a run's, inside the worker's: leaves them to it
        print(seen())
    print(seen())
print(seen())
"""


def test_a_runtime_changes_what_is_process_wide_only_while_it_is_current() -> None:
    # a process of its own: this one's session runtime has made its changes already
    done = subprocess.run(
        [sys.executable, "-c", PROCESS_WIDE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:5] == [
        "[0, False]",
        "[1, True]",
        "[1, True]",
        "[1, True]",
        "[0, False]",
    ]
