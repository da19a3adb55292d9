"""The run-notebook flow through the real parts: a Prefect server, a kernel, S3 over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
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
from notebook_jobs.tasks.models import NotebookResult, summary_links
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
async def task_states(flow_run_id: str) -> dict[str, tuple[str, str]]:
    """Each task run's state type and message, by task name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {
        run.name.rsplit("-", 1)[0]: (run.state.type.value, run.state.message or "")
        for run in runs
        if run.state is not None
    }


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


def test_artifacts_are_published_with_stable_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import notebook_jobs.tasks.progress_artifact as progress_artifact

    # a run this fast has no progress bar unless it is made at once
    monkeypatch.setattr(progress_artifact, "SHOWN_AFTER_SECONDS", 0.0)
    state = run_flow(
        notebook=str(EXAMPLES / "report.ipynb"), parameters={"n": 3}, store=str(tmp_path)
    )
    result = state_outcome(state)
    artifacts = asyncio.run(artifacts_of(result.flow_run_id))
    # three per run, each the flow run's own; the progress bar was removed at the end
    assert set(artifacts) == {"report-summary", "report-outputs", "report-history"}
    assert all(a.task_run_id is None for a in artifacts.values())
    assert "| 4 | ok |" in artifacts["report-summary"].data
    # what the notebook ran with: the value given, and the notebook's own default
    assert result.parameters == {"n": 3}
    assert result.parameters_used == {"n": 3, "label": "squares"}
    summary = artifacts["report-summary"].data
    assert "| n | `3` | run |" in summary
    assert '| label | `"squares"` | notebook default |' in summary
    assert result.parameters_from == {"n": "run", "label": "notebook"}
    # the links a caller reads back, and the values as values
    links = summary_links(summary)
    assert {k: links[k] for k in ("notebook", "html", "result")} == {
        k: result.artefacts.links[k] for k in ("notebook", "html", "result")
    }
    assert "| total | 14 |" in summary and "| label | squares |" in summary
    table = json.loads(artifacts["report-outputs"].data)
    assert {"name": "total", "value": "14"} in table
    assert {"name": "label", "value": result.outputs["label"]} in table  # a value, not JSON


def test_a_raising_notebook_fails_after_storing_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = run_flow(notebook=str(DATA / "raises.ipynb"), store=str(tmp_path))
    assert state.is_failed()
    assert state.message == "cell 3: ValueError: bad value 42"  # the run page's header
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
    # the notebook itself, in the summary: the failing cell marked, its source, the
    # output before it and the notebook's own traceback
    notebook = summary.split("## The notebook", 1)[1]
    failing = notebook.split("#### cell 3 · error · In[4] · **failed here**", 1)[1]
    assert failing.split("#### cell 4", 1)[0].count("bad value") >= 2  # source and traceback
    assert 'raise ValueError(f"bad value {value}")' in failing
    assert "cell 2 ran" in notebook and "Traceback" not in notebook.split("#### cell 3", 1)[0]
    # the task that ran the failing cell ends Failed, the others Completed
    assert asyncio.run(task_states(result.flow_run_id)) == {
        "stage-notebook": ("COMPLETED", ""),
        "execute-notebook": ("FAILED", "cell 3: ValueError: bad value 42"),
        "store-artefacts": ("COMPLETED", ""),
    }
    # one ERROR line for one failure: the run's own, with the notebook's traceback,
    # numbered as everywhere else (Prefect's engine lines for it are WARNINGs)
    (failure,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert failure.startswith("cell 3: ValueError: bad value 42\n")
    assert 'raise ValueError(f"bad value {value}")' in failure
    assert "cell 3, line 1" in failure and "In[" not in failure
    assert failure.endswith("the partial notebook is stored with the run (its summary links it)")
    assert any(
        r.levelno == logging.WARNING and r.getMessage().startswith("cell 3 (4/5) error")
        for r in caplog.records
    )
    # the staging line counts the cells the cell lines count
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("staged raises.ipynb (kernel python3, 5 code cells to run") for m in messages
    )
    assert {m.split(")", 1)[0].split("/")[-1] for m in messages if re.match(r"cell \d+ \(", m)} == {
        "5"
    }
    # no framework traceback anywhere in the log
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]


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


def test_plots_tables_and_data_are_stored_one_file_each(bucket: str, s3: Any) -> None:
    state = run_flow(notebook=str(DATA / "displays.ipynb"), store=f"s3://{bucket}/runs")
    result: NotebookResult = state_outcome(state)
    assert result.success, result.error
    shown = result.artefacts.displays
    assert [(d.cell, d.output, d.content_type) for d in shown] == [
        (2, 0, "image/png"),
        (3, 0, "text/html"),
        (4, 0, "application/json"),
    ]
    key = f"runs/run-notebook/{result.flow_run_id}/outputs"
    stored = {
        d.content_type: s3.get_object(Bucket=bucket, Key=d.uri.split(f"s3://{bucket}/", 1)[1])[
            "Body"
        ].read()
        for d in shown
    }
    assert [d.uri for d in shown] == [
        f"s3://{bucket}/{key}/cell-{cell}-0.{ext}"
        for cell, ext in ((2, "png"), (3, "html"), (4, "json"))
    ]
    assert stored["image/png"].startswith(b"\x89PNG\r\n")
    assert b"<table" in stored["text/html"] and b"square" in stored["text/html"]
    assert json.loads(stored["application/json"]) == {"points": 5, "squares": [0, 1, 4, 9, 16]}
    assert [d.size_bytes for d in shown] == [len(stored[d.content_type]) for d in shown]
    # listed in result.json as in the result, each with a link a browser opens
    document = json.loads(
        s3.get_object(Bucket=bucket, Key=f"runs/run-notebook/{result.flow_run_id}/result.json")[
            "Body"
        ].read()
    )
    assert document["artefacts"]["displays"] == [d.model_dump(mode="json") for d in shown]
    assert httpx.get(shown[0].link).content == stored["image/png"]
    summary = asyncio.run(artifacts_of(result.flow_run_id))["displays-summary"].data
    # the plot, in the notebook, embedded: it shows wherever the summary does
    assert "![cell 2, output 0](data:image/png;base64,iVBOR" in summary
    assert "| 0 | 0 |" in summary  # the DataFrame, as a table


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


def saved_with_outputs(path: Path) -> Path:
    """A notebook as a user saves it after running it: every code cell has outputs and
    an execution count, the last one a scrap (an output value); cell 2 raises now."""
    cells = [
        nbformat.v4.new_code_cell("print('cell 0 ran')"),
        nbformat.v4.new_code_cell("print('cell 1 ran')"),
        nbformat.v4.new_code_cell("raise ValueError('cell 2 fails this time')"),
        nbformat.v4.new_code_cell("print('cell 3 ran')"),
        nbformat.v4.new_code_cell("glue('total', 99)"),
    ]
    for count, cell in enumerate(cells, start=1):
        cell.execution_count = count
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="from last week\n")]
    cells[4].outputs.append(
        nbformat.v4.new_output(
            "display_data",
            data={
                "application/scrapbook.scrap.json+json": {
                    "name": "total",
                    "data": 12345,
                    "encoder": "json",
                    "version": 1,
                }
            },
            metadata={"scrapbook": {"name": "total", "data": True, "display": False}},
        )
    )
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Py"}
    nbformat.write(nb, path)
    return path


def test_cells_that_did_not_run_show_nothing_from_an_earlier_run(tmp_path: Path) -> None:
    """As papermill: the outputs saved in the input are cleared before the run, so after
    a failure in cell 2 no later cell shows an output, a count or a value anywhere."""
    notebook = saved_with_outputs(tmp_path / "saved.ipynb")
    state = run_flow(notebook=str(notebook), store=str(tmp_path / "store"))
    assert state.is_failed()
    result = NotebookResult.model_validate(state_outcome(state).result)
    assert [c.status for c in result.cells] == ["ok", "ok", "error", "not_run", "not_run"]
    assert result.outputs == {}  # the scrap of last week's run is not this run's output
    prefix = Path(result.artefacts.prefix)
    stored = nbformat.read(prefix / "notebook.ipynb", as_version=4)
    by_index = {c.metadata.get("nbjobs", {}).get("index"): c for c in stored.cells}
    assert [o.get("text") for o in by_index[1].outputs] == ["cell 1 ran\n"]
    for index in (3, 4):
        assert by_index[index].outputs == [] and by_index[index].execution_count is None
    assert "from last week" not in json.dumps(stored)
    assert "from last week" not in (prefix / "notebook.html").read_text()
    assert json.loads((prefix / "result.json").read_text())["outputs"] == {}
    summary = asyncio.run(artifacts_of(result.flow_run_id))["saved-summary"].data
    assert "from last week" not in summary and "12345" not in summary


def test_a_slow_cells_prints_reach_the_log_as_they_come(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A line printed at the start of a 3-second cell is in the run's log within about a
    second, not when the cell ends; each line is logged once."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                'import time\nprint("first", flush=True)\ntime.sleep(3)\nprint("second")'
            )
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Py"}
    path = tmp_path / "slow_prints.ipynb"
    nbformat.write(nb, path)
    with caplog.at_level(logging.INFO):
        state = run_flow(notebook=str(path), store=str(tmp_path / "store"))
    assert state.is_completed()
    records = {r.getMessage(): r.created for r in caplog.records}
    first, second = records["cell 0 stdout:\nfirst"], records["cell 0 stdout:\nsecond"]
    ended = next(t for m, t in records.items() if m.startswith("cell 0 (1/1) ok"))
    assert ended - first > 1.5  # logged while the cell still slept
    assert second - first > 1.0  # the line printed after the sleep, logged after it
    assert sum("first" in r.getMessage() for r in caplog.records if "stdout" in r.getMessage()) == 1
