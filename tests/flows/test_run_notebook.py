"""The run-notebook flow through the real parts: a Prefect server, a kernel, S3 over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from prefect.exceptions import MissingResult
from prefect.states import Completed

from notebook_jobs.blocks.exceptions import (
    CellSelectionError,
    NotebookExecutionError,
    NotebookFormatError,
    NotebookInputError,
    NotebookNotFoundError,
    ParameterValueError,
    UnknownKernelError,
    UnknownParameterError,
)
from notebook_jobs.flows.run_notebook import run_outcome
from notebook_jobs.tasks.engine.layout import runs_root
from notebook_jobs.tasks.models import NotebookResult
from tests.conftest import DATA, EXAMPLES, run_flow, state_outcome

pytestmark = pytest.mark.usefixtures("prefect_server")


async def artifacts_of(flow_run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


@pytest.mark.usefixtures("no_blocking_calls")
def test_example_runs_with_parameters_into_a_local_store(tmp_path: Path) -> None:
    state = run_flow(
        notebook=str(EXAMPLES / "report.ipynb"),
        parameters={"n": 4, "label": "sq"},
        store=str(tmp_path),
    )
    assert state.is_completed(), state.message
    result: NotebookResult = state_outcome(state)
    assert result.success and result.status == "completed"
    assert result.outputs == {"total": 30, "label": "sq"}
    prefix = tmp_path / "run-notebook" / str(state.state_details.flow_run_id)
    assert result.artefacts.prefix == str(prefix)
    stored = json.loads((prefix / "result.json").read_text())
    assert stored == result.model_dump(mode="json")
    executed = nbformat.read(prefix / "notebook.ipynb", as_version=4)
    assert executed.cells[2].metadata["tags"] == ["injected-parameters"]
    assert "<html" in (prefix / "notebook.html").read_text()[:500].lower()
    assert (prefix / "files" / "sq.csv").read_text().splitlines()[-1] == "4,16"
    assert (prefix / "input.ipynb").read_bytes() == (EXAMPLES / "report.ipynb").read_bytes()
    assert result.resources.peak_memory_bytes and result.timings.total_seconds > 0
    assert not (runs_root() / result.flow_run_id).exists()  # the run folder is cleaned up


def test_a_final_state_without_its_value_is_answered_from_the_store(tmp_path: Path) -> None:
    state = run_flow(notebook=str(EXAMPLES / "report.ipynb"), store=str(tmp_path))
    # what Prefect sometimes hands back: the Completed state as read from its API
    from_api = Completed(data=None)
    from_api.state_details.flow_run_id = state.state_details.flow_run_id
    with pytest.raises(MissingResult):
        asyncio.run(from_api.aresult())
    outcome = asyncio.run(run_outcome(from_api, str(tmp_path)))
    assert outcome == state_outcome(state)


def test_artifacts_are_published_with_stable_keys(tmp_path: Path) -> None:
    state = run_flow(
        notebook=str(EXAMPLES / "report.ipynb"), parameters={"n": 3}, store=str(tmp_path)
    )
    result = state_outcome(state)
    artifacts = asyncio.run(artifacts_of(result.flow_run_id))
    assert set(artifacts) >= {
        "report-progress",
        "report-summary",
        "report-notebook",
        "report-html",
        "report-result",
        "report-outputs",
    }
    assert artifacts["report-progress"].data == 100.0
    assert "| 4 | ok |" in artifacts["report-summary"].data
    assert artifacts["report-notebook"].data.startswith("[")  # a markdown link
    assert result.artefacts.links["notebook"] in artifacts["report-notebook"].data
    table = json.loads(artifacts["report-outputs"].data)
    assert {"name": "total", "value": "14"} in table


def test_a_raising_notebook_fails_after_storing_everything(tmp_path: Path) -> None:
    state = run_flow(notebook=str(DATA / "raises.ipynb"), store=str(tmp_path))
    assert state.is_failed()
    assert "ValueError: bad value 42 in cell 3" in state.message
    error = state_outcome(state)
    assert isinstance(error, NotebookExecutionError) and error.cell_index == 3
    result = NotebookResult.model_validate(error.result)
    assert (result.error.name, result.error.cell_index) == ("ValueError", 3)  # type: ignore[union-attr]
    prefix = Path(result.artefacts.prefix)
    partial = nbformat.read(prefix / "notebook.ipynb", as_version=4)
    # papermill's banners: one first, one just before the cell that raised
    assert partial.cells[3].outputs[0]["text"] == "cell 2 ran\n"
    assert partial.cells[5].outputs[0]["ename"] == "ValueError"
    assert [c.cell_type for c in partial.cells[:5:4]] == ["markdown", "markdown"]
    assert (prefix / "notebook.html").exists()
    assert json.loads((prefix / "result.json").read_text())["status"] == "failed"
    summary = asyncio.run(artifacts_of(result.flow_run_id))["raises-summary"].data
    assert "ValueError" in summary and "bad value 42" in summary


@pytest.mark.usefixtures("no_blocking_calls")
def test_notebook_from_s3_with_artefacts_in_s3(bucket: str, s3: Any) -> None:
    s3.put_object(
        Bucket=bucket, Key="in/report.ipynb", Body=(EXAMPLES / "report.ipynb").read_bytes()
    )
    state = run_flow(
        notebook=f"s3://{bucket}/in/report.ipynb", parameters={"n": 2}, store=f"s3://{bucket}/runs"
    )
    result: NotebookResult = state_outcome(state)
    assert result.outputs["total"] == 5
    key = f"runs/run-notebook/{result.flow_run_id}"
    assert result.artefacts.notebook == f"s3://{bucket}/{key}/notebook.ipynb"
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]}
    assert listed == {
        f"{key}/{n}"
        for n in (
            "input.ipynb",
            "notebook.ipynb",
            "notebook.html",
            "result.json",
            "files/squares.csv",
        )
    }
    stored = json.loads(s3.get_object(Bucket=bucket, Key=f"{key}/result.json")["Body"].read())
    assert stored["outputs"]["total"] == 5
    # the links in the result and the artifacts are presigned HTTP(S) URLs a browser can open
    assert httpx.get(result.artefacts.links["result"]).json()["flow_run_id"] == result.flow_run_id


def test_notebook_json_itself_and_a_cell_selection(tmp_path: Path) -> None:
    document = json.loads((DATA / "params.ipynb").read_text())
    state = run_flow(
        notebook=document, parameters={"name": "json"}, cells=[1, "2"], store=str(tmp_path)
    )
    result: NotebookResult = state_outcome(state)
    assert result.notebook == "notebook.ipynb"
    assert result.outputs["echo"]["name"] == "json" and "tagged_ran" not in result.outputs
    assert [c.status for c in result.cells] == ["ok", "ok", "ok", "skipped", "skipped"]


def test_notebook_over_http(tmp_path: Path, http_notebooks: str) -> None:
    state = run_flow(
        notebook=f"{http_notebooks}/params.ipynb", parameters={"x": 3}, store=str(tmp_path)
    )
    assert state_outcome(state).outputs["echo"]["x"] == 3


def test_timeout_ends_failed_with_the_partial_notebook(tmp_path: Path) -> None:
    state = run_flow(
        notebook=str(DATA / "sleeps.ipynb"),
        parameters={"seconds": 60},
        timeout_seconds=3,
        store=str(tmp_path),
    )
    assert state.is_failed() and "timeout of 3 s while running cell 2" in state.message
    error = state_outcome(state)
    assert isinstance(error, TimeoutError)
    assert error.result["status"] == "timed_out"
    partial = nbformat.read(Path(error.result["artefacts"]["notebook"]), as_version=4)
    assert partial.cells[2].outputs[0]["text"] == "started\n"


@pytest.mark.parametrize(
    ("request_", "error_type", "message"),
    [
        ({"notebook": "missing.ipynb"}, NotebookNotFoundError, "notebook not found"),
        ({"notebook": '{"cells": [1'}, NotebookFormatError, "not valid JSON"),
        ({"notebook": '{"not": "a notebook"}'}, NotebookFormatError, "not a Jupyter notebook"),
        (
            {"notebook": str(DATA / "params.ipynb"), "kernel": "julia-9"},
            UnknownKernelError,
            "installed kernels: .*python3",
        ),
        (
            {
                "notebook": str(DATA / "params.ipynb"),
                "parameters": {"typo": 1},
                "strict_parameters": True,
            },
            UnknownParameterError,
            "declared parameters: x, name",
        ),
        (
            {"notebook": str(DATA / "params.ipynb"), "parameters": {"x": float("inf")}},
            ParameterValueError,
            "not a JSON number",
        ),
        (
            {"notebook": str(DATA / "params.ipynb"), "cells": "99"},
            CellSelectionError,
            "out of range",
        ),
        (
            {"notebook": str(DATA / "params.ipynb"), "timeout_seconds": -1},
            NotebookInputError,
            "greater than 0",
        ),
    ],
)
def test_bad_input_is_refused_before_any_kernel_starts(
    tmp_path: Path, request_: dict[str, Any], error_type: type[Exception], message: str
) -> None:
    state = run_flow(**request_, store=str(tmp_path))
    assert state.is_failed()
    error = state_outcome(state)
    assert isinstance(error, error_type)
    assert re.search(message, str(error)), str(error)
    assert error_type.__name__ in state.message
    assert not list(tmp_path.rglob("notebook.ipynb"))  # nothing executed, nothing stored


def test_store_given_as_a_saved_block_with_secret_credentials(
    bucket: str, s3: Any, s3_endpoint: str
) -> None:
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    secret = "SECRET-ab12cd34ef56-do-not-leak"
    S3Bucket(
        bucket_name=bucket,
        bucket_folder="team",
        credentials=AwsCredentials(
            aws_access_key_id="AKIA-DISTINCTIVE-ID",
            aws_secret_access_key=secret,
            aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint),
        ),
    ).save(f"store-{bucket}", overwrite=True)
    state = run_flow(notebook=str(EXAMPLES / "report.ipynb"), store=f"store-{bucket}")
    result: NotebookResult = state_outcome(state)
    assert (
        result.artefacts.notebook
        == f"s3://{bucket}/team/run-notebook/{result.flow_run_id}/notebook.ipynb"
    )
    prefix = f"team/run-notebook/{result.flow_run_id}/"
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        assert secret.encode() not in body, item["Key"]
    for artifact in asyncio.run(artifacts_of(result.flow_run_id)).values():
        assert secret not in json.dumps(artifact.data)
