"""What a ``run-notebook`` flow run is called and tagged.

Hundreds of runs stay browsable in the UI: each is named after its notebook and a
digest of its parameters (``report-p3fa2c1``) and tagged with its notebook and how it
was started (``trigger:http``, ``schedule``, ``cli``, ``batch``).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from notebook_jobs.tasks.engine.fetch import notebook_name


def parameter_digest(parameters: dict[str, Any]) -> str:
    """A short, stable digest of a run's parameters, for run names (``'p3fa2c1'``)."""
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=str)
    return "p" + hashlib.sha1(canonical.encode()).hexdigest()[:6]


def notebook_label(notebook: Any) -> str:
    """A notebook's stem for names and tags: ``s3://b/nb/report.ipynb`` gives ``report``."""
    if isinstance(notebook, dict) or str(notebook).lstrip().startswith("{"):
        return "inline"
    stem = notebook_name(str(notebook)).removesuffix(".ipynb")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem) or "notebook"


def run_name() -> str:
    """The flow run's name: the notebook and a digest of its parameters (``report-p3fa2c1``)."""
    given = flow_run.get_parameters()
    return (
        f"{notebook_label(given.get('notebook'))}-{parameter_digest(given.get('parameters') or {})}"
    )


def trigger_of(tags: list[str], deployment_id: str | None) -> str:
    """How a run was started: ``schedule`` (the scheduler), ``http`` (API or UI), ``cli``,
    or ``batch`` (an item of ``run-notebooks``, tagged by it)."""
    for tag in tags:
        if tag.startswith("trigger:"):
            return tag.removeprefix("trigger:")
    if "auto-scheduled" in tags:
        return "schedule"
    return "http" if deployment_id else "cli"


def current_deployment_id() -> str | None:
    """This flow run's own deployment, if any, read from the run context.

    ``prefect.runtime.deployment.get_id()`` asks the API with a blocking call (about
    60 ms, holding up the event loop) whenever a run has no deployment, so on every
    local run, and answers a subflow with its parent's deployment.
    """
    context = FlowRunContext.get()
    found = context.flow_run.deployment_id if context and context.flow_run else None
    return str(found) if found else None


async def label_run(run_id: str, notebook: Any) -> None:
    """Tag the flow run with its notebook and trigger, so hundreds of runs stay browsable."""
    tags = list(flow_run.get_tags())
    wanted = [
        f"notebook:{notebook_label(notebook)}",
        f"trigger:{trigger_of(tags, current_deployment_id())}",
    ]
    missing = [tag for tag in wanted if tag not in tags]
    if not missing:
        return
    async with get_client() as client:
        await client.update_flow_run(UUID(run_id), tags=tags + missing)
