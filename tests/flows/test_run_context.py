"""The run's context in the notebook (``# nbjobs: logical_date``): a kernel, a real server."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import pytest

from notebook_jobs.blocks.exceptions import ParameterValueError
from notebook_jobs.tasks.engine.run_context import RUN_VALUES, declared_run_values, run_values
from notebook_jobs.tasks.models import NotebookResult
from tests.conftest import DATA, run_flow, state_outcome

SERIES = DATA / "series.ipynb"


def _with_parameters_cell(source: str) -> dict[str, object]:
    notebook = nbformat.read(SERIES, as_version=4)
    notebook.cells[0].source = source
    return json.loads(nbformat.writes(notebook))


@pytest.mark.unit
def test_a_parameters_cell_asks_for_run_values_by_comment() -> None:
    notebook = nbformat.read(SERIES, as_version=4)
    declared = declared_run_values(notebook)
    assert declared["report_date"] == "logical_date" and declared["due"] == "scheduled_time"
    assert set(declared.values()) == set(RUN_VALUES)
    assert "seconds" not in declared  # a help comment is not a request
    context = {value: f"<{value}>" for value in RUN_VALUES}
    # the caller's value wins; the others are filled in
    filled = run_values(notebook, {"report_date": "2026-01-01"}, context)
    assert "report_date" not in filled and filled["due"] == "<scheduled_time>"


@pytest.mark.unit
def test_a_typo_in_the_comment_is_refused_in_one_line() -> None:
    notebook = _with_parameters_cell("report_date = None  # nbjobs: logical_dat")
    with pytest.raises(ParameterValueError) as refused:
        declared_run_values(notebook)
    message = str(refused.value)
    assert "\n" not in message and "'report_date'" in message
    assert "logical_dat" in message and "logical_date, scheduled_time" in message


@pytest.mark.usefixtures("prefect_server")
def test_a_run_started_by_hand_is_for_now(tmp_path: Path) -> None:
    before = datetime.now(timezone.utc)
    state = run_flow(notebook=str(SERIES), store=str(tmp_path), parameters={"deployment": "mine"})
    assert state.is_completed(), state.message
    result: NotebookResult = state_outcome(state)
    context = result.context
    assert context is not None
    due = datetime.fromisoformat(context.scheduled_time)
    assert before - timedelta(seconds=5) <= due <= datetime.now(timezone.utc)
    assert context.logical_date == due.date().isoformat()
    assert context.trigger == "cli" and context.attempt == 1
    assert context.run_id == result.flow_run_id and context.deployment is None
    assert context.run_url and context.run_url.endswith(str(result.flow_run_id))
    # what the notebook saw is the context; a value the caller set is the caller's
    assert result.outputs["report_date"] == context.logical_date
    assert result.outputs["due"] == context.scheduled_time
    assert result.outputs["run_url"] == context.run_url
    assert result.outputs["deployment"] == "mine"
    assert result.parameters_from["report_date"] == "context"
    assert result.parameters_from["deployment"] == "run"


@pytest.mark.usefixtures("prefect_server")
def test_a_typo_refuses_the_run_before_any_kernel(tmp_path: Path) -> None:
    notebook = _with_parameters_cell("report_date = None  # nbjobs: logical_dat")
    state = run_flow(notebook=notebook, store=str(tmp_path))
    assert state.is_failed()
    assert isinstance(state_outcome(state), ParameterValueError)
    assert not list(tmp_path.rglob("notebook.ipynb"))


@pytest.mark.unit
def test_a_deployments_form_says_what_leaving_a_run_value_empty_does() -> None:
    from notebook_jobs.deployments.definitions import parameter_schema
    from notebook_jobs.tasks.engine.staging import declared_parameters

    schema = parameter_schema(declared_parameters(nbformat.read(SERIES, as_version=4)))
    described = schema["properties"]["report_date"]["description"]
    assert described == "left empty: the run's logical_date (# nbjobs: logical_date)"
    assert schema["properties"]["seconds"]["description"] == "how long the run takes"
