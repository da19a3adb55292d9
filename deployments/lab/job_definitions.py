"""jupyter-scheduler's job definitions as notebook deployments, and back.

A definition is made, and edited, by ``nbjobs deploy`` itself (a subprocess: the same
checks and one-line errors as at a terminal, and no Prefect import in the Jupyter
server); its cron and time zone are the deployment's schedule; pausing it pauses the
deployment. Deployments made with ``nbjobs deploy`` show as definitions too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path, PurePath
from typing import Any

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.models import DescribeJobDefinition, ListJobDefinitionsQuery

from notebook_jobs.deployments.lab.compute import Compute, compute_label
from notebook_jobs.deployments.lab.connection import Connection
from notebook_jobs.deployments.lab.jobs import (
    NOTEBOOK_KERNEL,
    OUTPUT_FORMATS,
    api_sort,
    milliseconds,
    shown_value,
)
from notebook_jobs.deployments.names import NOTEBOOK_TAG, POOL_NAME
from notebook_jobs.tasks.names import NOTEBOOK_LABEL_TAG, RUN_FLOW

DEPLOY_TIMEOUT_SECONDS = 300.0  # a first deploy may start the local server
_DEPLOYED = re.compile(r"^deployment \S+ \(([0-9a-f-]{36})\)", re.MULTILINE)
DEFINITION_SORTS = {"create_time": "CREATED", "name": "NAME", "update_time": "UPDATED"}


def definitions_filter(query: ListJobDefinitionsQuery | None = None) -> dict[str, Any]:
    """``/deployments/filter`` criteria: ``run-notebook``'s notebook deployments."""
    deployments: dict[str, Any] = {"tags": {"all_": [NOTEBOOK_TAG]}}
    if query is not None and query.name:
        deployments["name"] = {"like_": query.name}
    return {"flows": {"name": {"any_": [RUN_FLOW]}}, "deployments": deployments}


def definitions_sort(query: ListJobDefinitionsQuery) -> str:
    """``/deployments/filter``'s sort for a job definitions query."""
    return api_sort(query.sort_by, DEFINITION_SORTS, "CREATED_DESC", "UPDATED")


def schedule_of(deployment: dict[str, Any]) -> tuple[str | None, str | None]:
    """The deployment's cron and time zone (an interval schedule has no cron to show)."""
    for entry in deployment.get("schedules") or []:
        schedule = entry.get("schedule") or {}
        if schedule.get("cron"):
            return schedule["cron"], schedule.get("timezone")
    return None, None


def interval_of(deployment: dict[str, Any]) -> str | None:
    """The deployment's interval schedule as ``nbjobs deploy --every`` takes it (``90s``)."""
    for entry in deployment.get("schedules") or []:
        interval = (entry.get("schedule") or {}).get("interval")
        if interval:
            return f"{float(interval):g}s"
    return None


def definition_filename(deployment: dict[str, Any]) -> str:
    for tag in deployment.get("tags") or []:
        if tag.startswith(NOTEBOOK_LABEL_TAG):
            return str(tag).removeprefix(NOTEBOOK_LABEL_TAG) + ".ipynb"
    notebook = str((deployment.get("parameters") or {}).get("notebook") or "notebook.ipynb")
    return PurePath(notebook).name


def describe_definition(deployment: dict[str, Any]) -> DescribeJobDefinition:
    """The job definition jupyter-scheduler shows for a notebook deployment."""
    parameters = deployment.get("parameters") or {}
    cron, zone = schedule_of(deployment)
    created = milliseconds(deployment.get("created")) or 0
    return DescribeJobDefinition(
        job_definition_id=deployment["id"],
        name=deployment["name"],
        input_filename=definition_filename(deployment),
        runtime_environment_name=parameters.get("kernel") or NOTEBOOK_KERNEL,
        runtime_environment_parameters=None,
        output_formats=list(OUTPUT_FORMATS),
        parameters={
            str(k): shown_value(v) for k, v in (parameters.get("parameters") or {}).items()
        },
        tags=list(deployment.get("tags") or []),
        compute_type=compute_label(deployment),
        schedule=cron,
        timezone=zone,
        create_time=created,
        update_time=milliseconds(deployment.get("updated")) or created,
        active=not deployment.get("paused", False),
    )


def deploy(
    connection: Connection,
    *,
    notebook: str,
    name: str,
    parameters: dict[str, Any],
    kernel: str | None,
    compute: Compute,
    cron: str | None,
    timezone: str | None,
    cwd: str,
    every: str | None = None,
    store: str | None = None,
    memory_limit: str | None = None,
) -> str:
    """Make or update the deployment ``run-notebook/<name>`` with ``nbjobs deploy``;
    its id. The parameters go in a file only this account can read, never on a command
    line that ``ps`` shows to everyone.

    Raises:
        SchedulerError: ``nbjobs deploy`` refused (its one-line message) or did not
            finish in time, or a queue was chosen (a deployment goes to a pool).
    """
    if compute.queue is not None:
        raise SchedulerError(
            "a job definition runs in a pool, not a queue of it: choose Local worker, a "
            "Pool or a Slurm cluster"
        )
    options = [
        *(["--cron", cron] if cron else ["--every", every] if every else []),
        *(["--timezone", timezone or "UTC"] if cron or every else []),
        *(["--kernel", kernel] if kernel else []),
        *(["--cluster", compute.cluster] if compute.cluster else []),
        *(["--pool", compute.pool] if compute.pool != POOL_NAME else []),
        *(["--store", store] if store else []),
        *(["--memory-limit", memory_limit] if memory_limit else []),
    ]
    environment = {**os.environ, "PREFECT_API_URL": connection.api_url}
    if connection.auth_string:
        environment["PREFECT_API_AUTH_STRING"] = connection.auth_string
    with tempfile.NamedTemporaryFile("w", suffix=".json") as given:  # mode 0600
        json.dump(parameters, given)
        given.flush()
        command = [sys.executable, "-m", "notebook_jobs.deployments.cli", "deploy", notebook]
        command += ["--name", name, "-f", given.name, *options]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=environment,
                cwd=cwd,
                timeout=DEPLOY_TIMEOUT_SECONDS,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise SchedulerError(
                f"nbjobs deploy did not finish in {DEPLOY_TIMEOUT_SECONDS:.0f} s"
            ) from None
    found = _DEPLOYED.search(done.stdout)
    if done.returncode != 0 or found is None:
        said = [line for line in done.stderr.splitlines() if line.startswith("nbjobs: ")]
        raise SchedulerError(
            said[-1].removeprefix("nbjobs: ")
            if said
            else f"nbjobs deploy failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        )
    return found.group(1)


def notebook_path(root_dir: str, input_uri: str) -> Path:
    """The notebook a dialog names (relative to the Jupyter root), made absolute.

    Raises:
        SchedulerError: It is outside the root, or not a file.
    """
    root = Path(root_dir).resolve()
    path = (root / input_uri).resolve()
    if not path.is_relative_to(root):
        raise SchedulerError(f"{input_uri} is outside the Jupyter root {root}")
    if not path.is_file():
        raise SchedulerError(f"notebook not found: {input_uri} (in {root})")
    return path
