"""The loop guard itself: it sees a blocking call made on the loop, and not one in a thread.

Spilling a run moves its whole folder. Before the long-lived-worker issue, the flow
called ``spill_run`` on the event loop; the guard says so for that call, and is silent
for the same call through ``asyncio.to_thread``, as the flow makes it now.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest

from notebook_jobs.tasks.store.artefacts import RunFolder
from notebook_jobs.tasks.store.spill import spill_run
from tests.loop_guard import blocking_calls

pytestmark = pytest.mark.unit


def spill(run_dir: Path) -> None:
    run_dir.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), run_dir / "notebook.ipynb")
    folder = RunFolder(run_dir, prefix=f"loop-guard/{run_dir.parent.name}-{run_dir.name}")
    spill_run(folder, store_spec="s3://gone/runs", reason="the store did not answer")


def test_a_blocking_call_on_the_loop_is_seen_and_one_in_a_thread_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nbjobs_home: Path
) -> None:
    async def on_the_loop() -> None:
        spill(tmp_path / "a")

    async def in_a_thread() -> None:
        await asyncio.to_thread(spill, tmp_path / "b")

    with blocking_calls(monkeypatch) as calls:
        asyncio.run(on_the_loop())
        seen_on_the_loop = list(calls)
        calls.clear()
        asyncio.run(in_a_thread())
    assert any(
        call.startswith("shutil.move from notebook_jobs.tasks.store.spill:")
        for call in seen_on_the_loop
    ), seen_on_the_loop
    assert calls == []
    for name in ("a", "b"):  # both spilled, whichever way they were called
        spilled = nbjobs_home / "spill" / f"loop-guard__{tmp_path.name}-{name}"
        assert nbformat.read(spilled / "notebook.ipynb", as_version=4).cells == []
