"""What a ``run-notebook`` flow run is called and tagged.

Hundreds of runs stay browsable in the UI: each is named after its notebook, its
parameters and its id (``report n=20 label=monthly · 3f2a``) and tagged with its
notebook and how it was started (``trigger:api``, ``schedule``, ``cli``, ``batch``);
all of them carry the one tag ``nbjobs``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from notebook_jobs.tasks.engine.fetch import notebook_name

COMMON_TAG = "nbjobs"  # on every notebook run, whatever started it


MAX_NAME_CHARS = 80  # the runs list shows about this much of a name


def readable_name(notebook: Any, parameters: dict[str, Any], run_id: str | None) -> str:
    """A run's name: its notebook, its parameters as ``name=value``, its id's first characters.

    Example:
        >>> readable_name("reports/report.ipynb", {"n": 20, "label": "monthly"}, "3f2a9c...")
        'report n=20 label=monthly · 3f2a'
    """
    values = " ".join(
        f"{name}={value if isinstance(value, str) else json.dumps(value, default=str)}"
        for name, value in parameters.items()
    )
    text = f"{notebook_label(notebook)} {values}".strip()
    if len(text) > MAX_NAME_CHARS:
        text = text[: MAX_NAME_CHARS - 1] + "…"
    return f"{text} · {run_id[:4]}" if run_id else text


def notebook_label(notebook: Any) -> str:
    """A notebook's stem for names and tags: ``s3://b/nb/report.ipynb`` gives ``report``."""
    if isinstance(notebook, dict) or str(notebook).lstrip().startswith("{"):
        return "inline"
    stem = notebook_name(str(notebook)).removesuffix(".ipynb")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem) or "notebook"


def run_name() -> str:
    """The flow run's name (``report n=20 label=monthly · 3f2a``): unique, and readable."""
    given = flow_run.get_parameters()
    return readable_name(given.get("notebook"), given.get("parameters") or {}, flow_run.get_id())


def trigger_of(tags: list[str], deployment_id: str | None) -> str:
    """How a run was started: ``schedule`` (the scheduler), ``api`` (API or UI), ``cli``,
    or ``batch`` (an item of ``run-notebooks``, tagged by it)."""
    for tag in tags:
        if tag.startswith("trigger:"):
            return tag.removeprefix("trigger:")
    if "auto-scheduled" in tags:
        return "schedule"
    return "api" if deployment_id else "cli"


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
        COMMON_TAG,
        f"notebook:{notebook_label(notebook)}",
        f"trigger:{trigger_of(tags, current_deployment_id())}",
    ]
    missing = [tag for tag in wanted if tag not in tags]
    if not missing:
        return
    async with get_client() as client:
        await client.update_flow_run(UUID(run_id), tags=tags + missing)
