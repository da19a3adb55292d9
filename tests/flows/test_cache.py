"""Runs that are not repeated when nothing changed: a hit executes nothing."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pytest

from notebook_jobs.tasks.engine.cache_key import environment_fingerprint, find_lock_file
from notebook_jobs.tasks.models import NotebookResult, summary_links
from tests.conftest import DATA, run_flow, state_outcome

pytestmark = pytest.mark.usefixtures("prefect_server")
COUNTS = DATA / "counts.ipynb"


def run(marker: Path, store: str, **options: Any) -> tuple[Any, NotebookResult | Exception]:
    parameters = {"marker": str(marker), **options.pop("parameters", {})}
    state = run_flow(
        notebook=str(options.pop("notebook", COUNTS)),
        parameters=parameters,
        store=store,
        cache=options.pop("cache", True),
        **options,
    )
    return state, state_outcome(state)


def executions(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


async def summary_of(run_id: str, kind: str = "summary") -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return next(str(a.data) for a in found if a.key and a.key.endswith(f"-{kind}"))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_identical_run_is_a_hit_and_executes_nothing(
    where: str, tmp_path: Path, bucket: str
) -> None:
    marker = tmp_path / "runs.txt"
    store = str(tmp_path / "store") if where == "local" else f"s3://{bucket}/runs"
    _, first = run(marker, store)
    assert isinstance(first, NotebookResult) and first.cache is not None
    assert not first.cache.hit and first.cached_from is None and executions(marker) == 1
    state, second = run(marker, store)
    assert isinstance(second, NotebookResult) and executions(marker) == 1  # no kernel ran
    assert second.cached_from == first.flow_run_id != second.flow_run_id
    assert second.cache is not None and second.cache.hit and second.cache.key == first.cache.key
    assert second.outputs == first.outputs and second.timings.kernel_start_seconds is None
    assert second.artefacts.notebook == first.artefacts.notebook  # the cached run's own
    assert state.name == "Cached" and state.is_completed()
    summary = asyncio.run(summary_of(second.flow_run_id))
    assert f"**Cached**: the result of run `{first.flow_run_id}`" in summary
    # the notebook's history marks it: a row of its own, cached
    history = asyncio.run(summary_of(second.flow_run_id, "history"))
    (row,) = [
        line for line in history.splitlines() if f"/runs/flow-run/{second.flow_run_id})" in line
    ]
    assert "| cached |" in row
    links = summary_links(summary)
    assert links["html"] == second.artefacts.links["html"] and "result" in links
    assert f"{second.flow_run_id}/result.json" in links["result"]  # its own, with cached_from
    if where == "local":  # this run's result.json, pointing at the cached run
        own = tmp_path / "store" / "run-notebook" / second.flow_run_id / "result.json"
        assert NotebookResult.model_validate_json(own.read_bytes()).cached_from == first.flow_run_id
        assert Path(summary_links(summary)["html"].removeprefix("file://")).exists()


def test_a_changed_cell_parameter_input_or_fingerprint_is_a_miss(tmp_path: Path) -> None:
    marker, store = tmp_path / "runs.txt", str(tmp_path / "store")
    data = tmp_path / "data.csv"
    data.write_text("a\n1\n")
    base = {"input_files": [str(data)], "cache_fingerprint": "env-1"}
    _, first = run(marker, store, **base)
    assert isinstance(first, NotebookResult) and executions(marker) == 1
    edited = nbformat.read(COUNTS, as_version=4)
    edited.cells[3].source += "\n# a comment changes the code"
    nbformat.write(edited, tmp_path / "counts.ipynb")
    changes: list[dict[str, Any]] = [
        {"notebook": tmp_path / "counts.ipynb"},
        {"parameters": {"n": 2}},
        {"cache_fingerprint": "env-2"},
    ]
    for change in changes:
        _, result = run(marker, store, **{**base, **change})
        assert isinstance(result, NotebookResult) and result.cached_from is None, change
    assert executions(marker) == 4
    data.write_text("a\n2\n")  # the same name, other content
    _, result = run(marker, store, **base)
    assert isinstance(result, NotebookResult) and result.cached_from is None
    assert executions(marker) == 5
    _, again = run(marker, store, **base)  # and now nothing changed
    assert isinstance(again, NotebookResult) and again.cached_from == result.flow_run_id
    assert executions(marker) == 5


def test_the_lock_file_beside_the_notebook_is_the_default_fingerprint(tmp_path: Path) -> None:
    marker, store = tmp_path / "runs.txt", str(tmp_path / "store")
    project = tmp_path / "project"
    (project / "reports").mkdir(parents=True)
    shutil.copy(COUNTS, project / "reports" / "counts.ipynb")
    (project / "uv.lock").write_text("version = 1\n")
    notebook = project / "reports" / "counts.ipynb"
    assert find_lock_file(str(notebook)) == project / "uv.lock"
    assert environment_fingerprint(None, str(notebook)).startswith(f"uv.lock {project}/uv.lock")
    _, first = run(marker, store, notebook=notebook)
    _, hit = run(marker, store, notebook=notebook)
    assert isinstance(hit, NotebookResult) and hit.cached_from == first.flow_run_id  # type: ignore[union-attr]
    (project / "uv.lock").write_text("version = 1\n# a package upgraded\n")
    _, miss = run(marker, store, notebook=notebook)
    assert isinstance(miss, NotebookResult) and miss.cached_from is None
    assert executions(marker) == 2


def test_a_failed_run_is_never_cached(tmp_path: Path) -> None:
    marker, store = tmp_path / "runs.txt", str(tmp_path / "store")
    for _ in range(2):
        state, _ = run(marker, store, parameters={"fail": True})
        assert state.is_failed()
    assert executions(marker) == 2


def test_refresh_runs_again_and_expired_records_are_misses(tmp_path: Path) -> None:
    marker, store = tmp_path / "runs.txt", str(tmp_path / "store")
    run(marker, store, cache_expiration_seconds=2)
    _, refreshed = run(marker, store, refresh_cache=True, cache_expiration_seconds=2)
    assert isinstance(refreshed, NotebookResult) and refreshed.cached_from is None
    assert executions(marker) == 2
    _, hit = run(marker, store)
    assert isinstance(hit, NotebookResult) and hit.cached_from == refreshed.flow_run_id
    assert hit.cache is not None and hit.cache.expires_at is not None
    time.sleep(2.5)
    _, expired = run(marker, store)
    assert isinstance(expired, NotebookResult) and expired.cached_from is None
    assert executions(marker) == 3
    time.sleep(1.5)  # recorded with no expiration; this caller takes nothing older than 1 s
    _, too_old = run(marker, store, cache_expiration_seconds=1)
    assert isinstance(too_old, NotebookResult) and too_old.cached_from is None
    assert executions(marker) == 4


def test_without_cache_every_run_executes(tmp_path: Path) -> None:
    marker, store = tmp_path / "runs.txt", str(tmp_path / f"store-{uuid.uuid4().hex[:4]}")
    for _ in range(2):
        _, result = run(marker, store, cache=False)
        assert isinstance(result, NotebookResult) and result.cache is None
    assert executions(marker) == 2


def test_the_key_counts_a_secret_by_reference_and_ignores_outputs() -> None:
    from notebook_jobs.tasks.engine.cache_key import cache_key, code_sources

    def key(**change: Any) -> str:
        base: dict[str, Any] = {
            "code": ["x = 1"],
            "parameters": {"password": {"$secret": "warehouse"}},
            "kernel": "python3",
            "inputs": {"data.csv": "ab12"},
            "fingerprint": "given v1",
            "options": {"cells": None},
        }
        return cache_key(**{**base, **change})

    assert key() == key()
    assert (
        len({key(), key(kernel="ir"), key(inputs={"data.csv": "cd34"}), key(code=["x = 2"])}) == 4
    )
    assert key(parameters={"password": {"$secret": "other"}}) != key()
    nb = nbformat.read(COUNTS, as_version=4)
    ran = nbformat.read(COUNTS, as_version=4)
    ran.cells[2].outputs = [nbformat.v4.new_output("stream", text="ran\n")]
    ran.cells[2].execution_count = 7
    assert code_sources(nb) == code_sources(ran)
