"""run-notebooks: a parameter grid fanned out into runs, locally and on a Dask LocalCluster."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client

from notebook_jobs.blocks.exceptions import BatchError
from notebook_jobs.flows.run_notebooks import expand_grid, run_notebooks
from notebook_jobs.tasks.models import NotebookRequest
from tests.conftest import DATA, state_outcome

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_expand_grid() -> None:
    assert expand_grid({"n": [1, 2], "s": ["a", "b"]}) == [
        {"n": 1, "s": "a"},
        {"n": 1, "s": "b"},
        {"n": 2, "s": "a"},
        {"n": 2, "s": "b"},
    ]
    assert expand_grid({}) == [{}]


@pytest.mark.usefixtures("no_blocking_calls")
def test_a_grid_runs_locally_each_item_its_own_run(tmp_path: Path) -> None:
    batch = asyncio.run(
        run_notebooks(
            notebook=str(DATA / "params.ipynb"),
            grid={"x": [1, 2, 3], "name": ["a", "b"]},
            store=str(tmp_path),
            max_concurrency=2,
        )
    )
    assert (batch.total, batch.succeeded, batch.failed) == (6, 6, 0)
    echoed = sorted(
        (i.result["outputs"]["echo"]["x"], i.result["outputs"]["echo"]["name"])
        for i in batch.items
        if i.result
    )
    assert echoed == [(1, "a"), (1, "b"), (2, "a"), (2, "b"), (3, "a"), (3, "b")]
    assert len({i.flow_run_id for i in batch.items}) == 6
    for item in batch.items:  # each with its own artefacts and result
        stored = json.loads(
            (tmp_path / "run-notebook" / str(item.flow_run_id) / "result.json").read_text()
        )
        assert stored["parameters"] == item.parameters

    async def item_tags() -> list[list[str]]:
        async with get_client() as client:
            return [
                (await client.read_flow_run(UUID(str(item.flow_run_id)))).tags
                for item in batch.items
            ]

    for tags in asyncio.run(item_tags()):  # browsable by notebook and by how they started
        assert {"nbjobs", "notebook:params", "trigger:batch"} <= set(tags), tags

    async def batch_tables() -> tuple[list[Any], Any]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
        from prefect.client.schemas.sorting import ArtifactSort

        async with get_client() as client:
            versions = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["params-batch"])),
                sort=ArtifactSort.CREATED_DESC,
            )
            parent = await client.read_flow_run(UUID(str(versions[0].flow_run_id)))
        ours = [v for v in versions if v.flow_run_id == versions[0].flow_run_id]
        return ours, parent

    # the batch as one table: a row per item, its values, status and outputs, its run;
    # a version per change, never the same table twice in a row
    versions, parent = asyncio.run(batch_tables())
    table = versions[0]
    assert all(a.data != b.data for a, b in itertools.pairwise(versions))
    # the notebook's newest history has every item, though they ended together
    history = asyncio.run(newest("params-history"))
    assert all(f"/runs/flow-run/{item.flow_run_id})" in history for item in batch.items)
    # the batch's own run, named and tagged by its notebook (not "fine-eel")
    assert parent.name.startswith("batch params over x (3), name (2) · ")
    assert {"nbjobs", "notebook:params", "trigger:batch"} <= set(parent.tags)
    assert table.description == "6 of 6 notebooks done"
    rows = json.loads(table.data)
    assert len(rows) == 6 and {row["status"] for row in rows} == {"completed"}
    by_item = {int(row["item"]): row for row in rows}
    for item in batch.items:
        row = by_item[item.index]
        assert row["parameters"] == " ".join(f"{k}={v}" for k, v in item.parameters.items())
        assert json.loads(row["output echo"])["x"] == item.parameters["x"]
        assert row["run"].endswith(f"/runs/flow-run/{item.flow_run_id}")


async def newest(key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        (latest,) = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(latest.data)


def test_a_failing_item_does_not_stop_the_others(tmp_path: Path) -> None:
    requests = [
        NotebookRequest(notebook=str(DATA / "raises.ipynb")),
        NotebookRequest(notebook=str(DATA / "params.ipynb"), parameters={"x": 5}),
    ]
    state = asyncio.run(run_notebooks(requests=requests, store=str(tmp_path), return_state=True))
    assert state.is_failed() and "1 of 2 notebooks failed" in state.message
    error = state_outcome(state)
    assert isinstance(error, BatchError)
    items = error.batch["items"]
    assert [i["success"] for i in items] == [False, True]
    assert "bad value 42" in items[0]["error"] and items[1]["result"]["outputs"]["echo"]["x"] == 5


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("no_blocking_calls")
def test_the_batch_spreads_over_a_dask_local_cluster(
    tmp_path: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)  # Dask's worker processes find the server
    batch = asyncio.run(
        run_notebooks(
            notebook=str(DATA / "params.ipynb"),
            grid={"x": [10, 20, 30, 40]},
            store=str(tmp_path),
            max_concurrency=2,
            executor="dask",
        )
    )
    assert (batch.total, batch.succeeded) == (4, 4)
    assert sorted(i.result["outputs"]["echo"]["x"] for i in batch.items if i.result) == [
        10,
        20,
        30,
        40,
    ]
