"""What a ``run-notebook`` flow run is called and tagged.

Hundreds of runs stay browsable in the UI: each is named after its notebook, its
parameters and its id (``report n=20 label=monthly · 9c3f2a``) and tagged with its
notebook and how it was started (``trigger:api``, ``ui``, ``schedule``, ``cli``, ``batch``);
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

from notebook_jobs.tasks.engine.fetch import display_name
from notebook_jobs.tasks.engine.secrets import secret_reference

COMMON_TAG = "nbjobs"  # on every notebook run, whatever started it


MAX_NAME_CHARS = 80  # the runs list shows about this much of a name
ID_CHARS = 6  # of the run id's random end: one in 16 million for two runs alike


def readable_name(
    notebook: Any, parameters: dict[str, Any], run_id: str | None, name: str | None = None
) -> str:
    """A run's name: its notebook, its parameters as ``name=value``, its id's last characters.

    The last ones: Prefect's ids are UUIDv7, whose first characters are the time they
    were made, the same for runs made together (three scheduled runs shared ``01a2``).

    Example:
        >>> readable_name("reports/report.ipynb", {"n": 20, "label": "monthly"}, "...9c3f2a")
        'report n=20 label=monthly · 9c3f2a'
    """
    values = " ".join(f"{key}={_shown(value)}" for key, value in parameters.items())
    text = f"{notebook_label(notebook, name)} {values}".strip()
    if len(text) > MAX_NAME_CHARS:
        text = text[: MAX_NAME_CHARS - 1] + "…"
    return f"{text} · {run_id[-ID_CHARS:]}" if run_id else text


def _shown(value: Any) -> str:
    if secret_reference(value):
        return "<secret>"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def notebook_label(notebook: Any, name: str | None = None) -> str:
    """A notebook's stem for names and tags, as the run's result names it
    (``display_name``): ``s3://b/nb/report.ipynb`` gives ``report``, a notebook sent
    inline its ``name``, else its metadata's name."""
    document = notebook if isinstance(notebook, (str, dict)) else str(notebook)
    stem = display_name(document, name).removesuffix(".ipynb")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem) or "notebook"


def run_name() -> str:
    """The flow run's name (``report n=20 label=monthly · 9c3f2a``): unique, and readable."""
    given = flow_run.get_parameters()
    return readable_name(
        given.get("notebook"), given.get("parameters") or {}, flow_run.get_id(), given.get("name")
    )


UI_RUN_MESSAGE = "Run from the Prefect UI"  # the UI's Run buttons create runs with it


def trigger_of(tags: list[str], deployment_id: str | None, first_message: str = "") -> str:
    """How a run was started: ``schedule`` (the scheduler), ``ui`` (the UI's Run
    buttons: Prefect's UI gives the run's first state the message ``UI_RUN_MESSAGE``),
    ``api`` (any other call of a deployment), ``cli``, or ``batch`` (an item of
    ``run-notebooks``, tagged by it)."""
    for tag in tags:
        if tag.startswith("trigger:"):
            return tag.removeprefix("trigger:")
    if "auto-scheduled" in tags:
        return "schedule"
    if not deployment_id:
        return "cli"
    return "ui" if first_message.startswith(UI_RUN_MESSAGE) else "api"


def current_deployment_id() -> str | None:
    """This flow run's own deployment, if any, read from the run context.

    ``prefect.runtime.deployment.get_id()`` asks the API with a blocking call (about
    60 ms, holding up the event loop) whenever a run has no deployment, so on every
    local run, and answers a subflow with its parent's deployment.
    """
    context = FlowRunContext.get()
    found = context.flow_run.deployment_id if context and context.flow_run else None
    return str(found) if found else None


async def label_run(run_id: str, notebook: Any, name: str | None = None) -> None:
    """Tag the flow run with its notebook and trigger, so hundreds of runs stay browsable."""
    tags = list(flow_run.get_tags())
    deployment_id = current_deployment_id()
    async with get_client() as client:
        first_message = ""
        if trigger_of(tags, deployment_id) == "api":  # or the UI: its first state says
            states = await client.read_flow_run_states(UUID(run_id))
            if states:
                first_message = min(states, key=lambda state: state.timestamp).message or ""
        wanted = [
            COMMON_TAG,
            f"notebook:{notebook_label(notebook, name)}",
            f"trigger:{trigger_of(tags, deployment_id, first_message)}",
        ]
        missing = [tag for tag in wanted if tag not in tags]
        if missing:
            await client.update_flow_run(UUID(run_id), tags=tags + missing)


async def show_parameters(run_id: str, used: dict[str, Any], stored_input: str | None) -> None:
    """Make the run's Parameters tab show what the notebook ran with.

    ``parameters`` becomes the values used (the notebook's and the deployment's
    defaults merged in), and a notebook sent inline becomes the URI of its stored copy
    instead of its whole JSON. A retry from the UI then runs the same notebook with
    the same values.
    """
    given = dict(flow_run.get_parameters())
    shown = {**given, "parameters": used}
    notebook = given.get("notebook")
    if stored_input and (isinstance(notebook, dict) or str(notebook).lstrip().startswith("{")):
        shown["notebook"] = stored_input
    if shown == given:
        return
    async with get_client() as client:
        await client.update_flow_run(UUID(run_id), parameters=shown)
