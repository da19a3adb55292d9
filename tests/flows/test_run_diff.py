"""What changed between two runs: `nbjobs diff` and the diff-runs flow, on real runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from notebook_jobs.tasks.engine.compare import compare_runs, comparison_markdown
from tests.conftest import EXAMPLES, run_flow, state_outcome

pytestmark = pytest.mark.usefixtures("prefect_server")
MIB = 1024 * 1024


def test_the_comparison_itself() -> None:
    a = {
        "parameters": {"n": 1},
        "outputs": {"total": 1, "label": "x"},
        "cells": [
            {"index": 1, "status": "ok", "duration_seconds": 0.1},
            {"index": 2, "status": "ok", "duration_seconds": 0.01},
        ],
    }
    b = {
        "parameters": {"n": 2},
        "outputs": {"total": 5, "new": True},
        "cells": [
            {"index": 1, "status": "ok", "duration_seconds": 0.25},
            {"index": 2, "status": "error", "duration_seconds": 0.01},
        ],
    }
    a["cells"] += [{"index": 3, "status": "ok", "peak_memory_bytes": 100 * MIB}]  # type: ignore[operator]
    b["cells"] += [{"index": 3, "status": "ok", "peak_memory_bytes": 250 * MIB}]  # type: ignore[operator]
    found = compare_runs(a, b, files=({"a.csv": "1", "b.csv": "2"}, {"a.csv": "9", "c.csv": "3"}))
    assert found["parameters"] == [{"name": "n", "a": 1, "b": 2, "change": "changed", "delta": 1}]
    assert found["outputs"] == [
        {"name": "total", "a": 1, "b": 5, "change": "changed", "delta": 4},
        {"name": "label", "a": "x", "b": None, "change": "removed"},
        {"name": "new", "a": None, "b": True, "change": "added"},
    ]
    assert [(c["index"], c["status"], c["slower"], c["grew"]) for c in found["cells"]] == [
        (1, ["ok", "ok"], True, False),  # 2.5 times slower
        (2, ["ok", "error"], False, False),
        (3, ["ok", "ok"], False, True),  # 2.5 times the memory
    ]
    assert "| 3 | ok → ok |  →  | 100 MiB → 250 MiB | **grew** |" in comparison_markdown(found)
    assert found["files"] == [
        {"name": "a.csv", "change": "changed"},
        {"name": "b.csv", "change": "removed"},
        {"name": "c.csv", "change": "added"},
    ]


def test_two_runs_of_one_notebook_compared(tmp_path: Path, prefect_server: str) -> None:
    runs = []
    for n in (3, 5):
        state = run_flow(
            notebook=str(EXAMPLES / "report.ipynb"), parameters={"n": n}, store=str(tmp_path)
        )
        runs.append(state_outcome(state))
    paths = [tmp_path / "run-notebook" / r.flow_run_id / "result.json" for r in runs]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "nbjobs"), "diff", *map(str, paths), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["parameters"] == [{"name": "n", "a": 3, "b": 5, "change": "changed", "delta": 2}]
    assert found["outputs"] == [
        {"name": "total", "a": 14, "b": 55, "change": "changed", "delta": 41}
    ]
    # the cell that prints how many rows it wrote, and the one that shows the total
    printed, shown = found["text"]
    assert shown["diff"].endswith("-14\n+55")
    assert "-squares: wrote 3 rows to squares.csv" in printed["diff"]
    assert "+squares: wrote 5 rows to squares.csv" in printed["diff"]
    assert found["files"] == [{"name": "squares.csv", "change": "changed"}]

    # the same from the flow, by run id, published for the UI
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from notebook_jobs.flows.run_diff import run_diff

    state = asyncio.run(run_diff(runs[0].flow_run_id, runs[1].flow_run_id, return_state=True))
    assert state_outcome(state)["outputs"] == found["outputs"]

    async def published() -> tuple[list[Any], Any, list[Any]]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
                )
            )
            diff_run = await client.read_flow_run(state.state_details.flow_run_id)
            compared = [await client.read_flow_run(UUID(r.flow_run_id)) for r in runs[:2]]
        return list(found), diff_run, compared

    artifacts, diff_run, compared = asyncio.run(published())
    a, b = (str(r.flow_run_id) for r in runs[:2])
    # one artifact per pair of runs, keyed and titled by them, with links to both
    assert [x.key for x in artifacts] == [f"report-diff-{a[-6:]}-{b[-6:]}"]
    markdown = str(artifacts[0].data)
    title = markdown.splitlines()[0]
    for run in compared:
        assert f"[{run.name}](" in title and f"/runs/flow-run/{run.id}) (completed)" in title
    assert (
        "## outputs: 1 change" in markdown and "| total | `14` | `55` | changed (+41) |" in markdown
    )
    assert "## cells: none changed" in markdown or "## cells: 4 changed" in markdown
    # the diff's own run is named by what it compares and tagged by its notebook
    assert diff_run.name == f"diff {compared[0].name} → {compared[1].name}"
    assert {"nbjobs", "notebook:report", "trigger:diff"} <= set(diff_run.tags)


def test_a_run_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "nbjobs"),
            "diff",
            str(tmp_path / "a.json"),
            str(tmp_path / "b.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("nbjobs: cannot read the run") and "Traceback" not in done.stderr
