"""A run hears its runtime: the cells reach its cell sinks and the stored result its result
sinks, through the real flow, its Prefect tasks and a real kernel; links follow its file
server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from notebook_jobs.tasks.runtime import current_runtime, using_runtime
from tests.conftest import EXAMPLES, run_flow, state_outcome

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_the_cells_and_the_result_reach_the_runtimes_sinks(tmp_path: Path) -> None:
    cells: list[Any] = []
    results: list[Any] = []
    runtime = replace(
        current_runtime(),  # the suite's executor
        cell_sinks=(cells.append,),
        result_sinks=(results.append,),
        files_url="http://127.0.0.1:4299",
    )
    with using_runtime(runtime):
        state = run_flow(
            notebook=str(EXAMPLES / "report.ipynb"), parameters={"n": 4}, store=str(tmp_path)
        )
    result = state_outcome(state)
    assert result.success, result
    ran = [(e.phase, e.index) for e in cells if e.index is not None]
    first = ran[0][1]
    assert ran[:2] == [("start", first), ("end", first)]  # each cell as it starts and ends
    assert len([phase for phase, _ in ran if phase == "end"]) == len(result.cells) == 4
    assert [r.flow_run_id for r in results] == [result.flow_run_id]
    assert results[0].outputs["total"] == 30
    # local-store links are signed for the runtime's file server
    assert result.artefacts.links["notebook"].startswith("http://127.0.0.1:4299/files/")


def test_a_run_outside_the_runtime_hears_nothing_of_it(tmp_path: Path) -> None:
    cells: list[Any] = []
    with using_runtime(replace(current_runtime(), cell_sinks=(cells.append,))):
        pass
    result = state_outcome(run_flow(notebook=str(EXAMPLES / "report.ipynb"), store=str(tmp_path)))
    assert result.success and cells == []
    assert result.artefacts.links["notebook"].startswith("file://")
