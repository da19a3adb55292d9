"""jupyter-scheduler's jobs as Prefect flow runs of ``run-notebook``, and back.

No Prefect import: the runs are the API's JSON (``/flow_runs/filter``), so the Jupyter
server stays light. A job's create time is its run's expected start: when a scheduled
run falls due, as jupyter-scheduler makes a job at each tick; runs scheduled for later
are not jobs yet.
"""

from __future__ import annotations

import ast
import json
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.models import (
    DescribeJob,
    ListJobsQuery,
    SortDirection,
    SortField,
    Status,
)

from notebook_jobs.deployments.lab.compute import compute_label
from notebook_jobs.deployments.papermill_args import resolve_type
from notebook_jobs.tasks.names import NOTEBOOK_LABEL_TAG, RUN_FLOW

OUTPUT_FORMATS = ["ipynb", "html"]  # every run stores both (tasks/store/artefacts.py)
LAB_TRIGGER = "jupyterlab"  # trigger:jupyterlab, beside trigger:cli, trigger:schedule
NOTEBOOK_KERNEL = "notebook"  # the environment that runs each notebook in its own kernel
TOKEN_KEY = "jupyterlab:"  # a job's idempotency token, as its run's idempotency key

# Prefect's state types behind each of jupyter-scheduler's statuses
STATE_TYPES: dict[Status, list[str]] = {
    Status.CREATED: [],
    Status.QUEUED: ["SCHEDULED", "PENDING"],
    Status.IN_PROGRESS: ["RUNNING", "PAUSED"],
    Status.COMPLETED: ["COMPLETED"],
    Status.FAILED: ["FAILED", "CRASHED"],
    Status.STOPPING: ["CANCELLING"],
    Status.STOPPED: ["CANCELLED"],
}
STATUS_OF = {state: status for status, states in STATE_TYPES.items() for state in states}
# jupyter-scheduler's sort fields, and the flow run sort of Prefect's API that matches
SORTS = {
    "create_time": "EXPECTED_START_TIME",
    "start_time": "START_TIME",
    "end_time": "END_TIME",
    "name": "NAME",
}


def milliseconds(timestamp: str | None) -> int | None:
    """An API timestamp (ISO 8601) as jupyter-scheduler's epoch milliseconds."""
    if not timestamp:
        return None
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def notebook_filename(run: dict[str, Any]) -> str:
    """The file name of the run's notebook: its path's, else its label tag's."""
    notebook = (run.get("parameters") or {}).get("notebook")
    if isinstance(notebook, str) and not notebook.lstrip().startswith("{"):
        name = PurePath(notebook.split("?")[0]).name
        if name:
            return name
    for tag in run.get("tags") or []:
        if tag.startswith(NOTEBOOK_LABEL_TAG):
            return str(tag).removeprefix(NOTEBOOK_LABEL_TAG) + ".ipynb"
    return "notebook.ipynb"


def token_of(key: str | None) -> str | None:
    """The idempotency token a job was created with (None: the key is ours)."""
    return key.removeprefix(TOKEN_KEY) if key and key.startswith(TOKEN_KEY) else None


def shown_value(value: Any) -> str:
    """A parameter's value as the dialog shows it (its fields are strings)."""
    return value if isinstance(value, str) else json.dumps(value)


def describe_job(
    run: dict[str, Any], *, definitions: set[str], run_link: str | None
) -> DescribeJob:
    """The job jupyter-scheduler shows for a flow run.

    ``definitions``: the notebook deployments' ids (a run of ``adhoc`` has none).
    """
    state = run.get("state") or {}
    status = STATUS_OF.get(state.get("type", ""), Status.QUEUED)
    parameters = run.get("parameters") or {}
    deployment_id = run.get("deployment_id")
    created = milliseconds(run.get("expected_start_time")) or milliseconds(run["created"])
    says_why = status in (Status.FAILED, Status.STOPPED) and state.get("message")
    return DescribeJob(
        job_id=run["id"],
        name=run["name"],
        input_filename=notebook_filename(run),
        runtime_environment_name=parameters.get("kernel") or NOTEBOOK_KERNEL,
        runtime_environment_parameters=None,
        output_formats=list(OUTPUT_FORMATS),
        job_definition_id=deployment_id if deployment_id in definitions else None,
        parameters={
            str(k): shown_value(v) for k, v in (parameters.get("parameters") or {}).items()
        },
        tags=[*(run.get("tags") or []), *([f"prefect-ui:{run_link}"] if run_link else [])],
        compute_type=compute_label(run),
        idempotency_token=token_of(run.get("idempotency_key")),
        url=run_link or f"/jobs/{run['id']}",
        create_time=created,
        update_time=milliseconds(run.get("updated")) or created,
        start_time=milliseconds(run.get("start_time")),
        end_time=milliseconds(run.get("end_time")),
        status=status,
        status_message=state.get("message") if says_why else None,
    )


def runs_filter(query: ListJobsQuery | None, *, now: datetime) -> dict[str, Any]:
    """``/flow_runs/filter`` (and ``/count``) criteria for a jobs query: the runs of
    ``run-notebook`` that are due, of one definition, status, name or tags."""
    flow_runs: dict[str, Any] = {"expected_start_time": {"before_": now.isoformat()}}
    if query is not None:
        if query.job_definition_id:
            flow_runs["deployment_id"] = {"any_": [query.job_definition_id]}
        if query.status:
            flow_runs["state"] = {"type": {"any_": STATE_TYPES[query.status]}}
        if query.name:
            flow_runs["name"] = {"like_": query.name}
        if query.tags:
            flow_runs["tags"] = {"all_": list(query.tags)}
        if query.start_time:
            start = datetime.fromtimestamp(query.start_time / 1000, timezone.utc)
            flow_runs["start_time"] = {"after_": start.isoformat()}
    return {"flows": {"name": {"any_": [RUN_FLOW]}}, "flow_runs": flow_runs}


def api_sort(
    sort_by: list[SortField], sorts: dict[str, str], default: str, descending_only: str
) -> str:
    """Prefect's sort for a jupyter-scheduler query's first sort field (the API sorts by
    one): ``sorts`` maps its fields to Prefect's names, ``default`` is the sort without
    a known field, and ``descending_only`` the one name Prefect sorts one way only."""
    field = sort_by[0] if sort_by else None
    if field is None or field.name not in sorts:
        return default
    name = sorts[field.name]
    if name == descending_only:
        return f"{name}_DESC"
    return f"{name}_{'ASC' if field.direction == SortDirection.asc else 'DESC'}"


def runs_sort(query: ListJobsQuery) -> str:
    """``/flow_runs/filter``'s sort for a jobs query."""
    return api_sort(query.sort_by, SORTS, "EXPECTED_START_TIME_DESC", "END_TIME")


def typed_parameters(
    given: dict[str, str] | None, declared: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """The dialog's parameters (strings) typed by the notebook's parameters cell.

    A declared ``str`` keeps the text as typed (``007`` stays ``"007"``); a declared
    ``int``, ``float``, ``bool``, ``list`` or ``dict`` must read as one; anything else
    is read as papermill reads ``-p``.

    Raises:
        SchedulerError: A value that is not of its declared type, in one line that says
            which parameter and what was expected.
    """
    types = {p["name"]: p.get("type") for p in declared or []}
    typed: dict[str, Any] = {}
    for name, text in (given or {}).items():
        kind = types.get(name)
        typed[name] = _typed_value(kind, name, str(text))
    return typed


EXPECTED_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "float": float,
    "list": (list, tuple),
    "dict": dict,
}


def _typed_value(kind: str | None, name: str, text: str) -> Any:
    if kind == "str":
        return text
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise SchedulerError(
            f"parameter {name!r}: {text!r} is not a bool (write True or False; the "
            f"notebook's parameters cell declares {name}: bool)"
        )
    if kind in ("int", "float", "list", "dict"):
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = None
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = EXPECTED_TYPES[kind]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise SchedulerError(
                f"parameter {name!r}: {text!r} is not a{'n' if kind == 'int' else ''} "
                f"{kind} (the notebook's parameters cell declares {name}: {kind})"
            )
        return list(value) if isinstance(value, tuple) else value
    return resolve_type(text)
