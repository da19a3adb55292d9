"""What a ``run-notebook`` flow run is called and tagged.

Hundreds of runs stay browsable in the UI: each is named after its notebook, its
parameters and its id (``report n=20 label=monthly · 9c3f2a``) and tagged with its
notebook and how it was started (``trigger:api``, ``ui``, ``schedule``, ``cli``, ``batch``);
all of them carry the one tag ``nbjobs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from notebook_jobs.tasks.engine.fetch import display_name
from notebook_jobs.tasks.engine.run_context import SERIES_TRIGGERS
from notebook_jobs.tasks.engine.secrets import secret_reference

COMMON_TAG = "nbjobs"  # on every notebook run, whatever started it


MAX_NAME_CHARS = 80  # the runs list shows about this much of a name
ID_CHARS = 6  # of the run id's random end: one in 16 million for two runs alike


def readable_name(
    notebook: Any,
    parameters: dict[str, Any],
    run_id: str | None,
    name: str | None = None,
    tick: str | None = None,
) -> str:
    """A run's name: its notebook, the tick it is for (a scheduled or backfill run's), its
    parameters as ``name=value``, its id's last characters.

    The last ones: Prefect's ids are UUIDv7, whose first characters are the time they
    were made, the same for runs made together (three scheduled runs shared ``01a2``).

    Example:
        >>> readable_name("reports/report.ipynb", {"n": 20, "label": "monthly"}, "...9c3f2a")
        'report n=20 label=monthly · 9c3f2a'
    """
    values = " ".join(f"{key}={_shown(value)}" for key, value in parameters.items())
    text = " ".join(part for part in (notebook_label(notebook, name), tick, values) if part)
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


# Names nobody chose: the server's (``fine-eel``: two lowercase words) and the default of
# the V2 UI's run form (``Awesome-Dingo``: one of its adjectives, capitalised, and a word)
MADE_UP_NAME = re.compile(
    r"^(?:[a-z]+-[a-z]+|(?:Awesome|Rustic|Small|Gorgeous|Fantastic|Sleek|Intelligent|Unbranded"
    r"|Refined|Licensed|Generic|Practical|Ergonomic|Handcrafted|Tasty|Handmade|Incredible)"
    r"-[A-Za-z]+)$"
)


def run_name() -> str:
    """The flow run's name: the one its creator gave it (typed in the UI's run form, or
    sent over HTTP), else a readable one (``report n=20 label=monthly · 9c3f2a``)."""
    current = flow_run.get_name()
    if current and not MADE_UP_NAME.match(current):
        return str(current)
    given = flow_run.get_parameters()
    repair_of = given.get("repair_of")
    return readable_name(
        given.get("notebook") or ("repair" if repair_of else None),
        given.get("parameters") or {},
        flow_run.get_id(),
        given.get("name"),
        f"of {str(repair_of)[-ID_CHARS:]}" if repair_of else None,
    )


REPAIR_TAG = "repair-of:"  # on a repair: the run it repairs
UI_RUN_MESSAGE = "Run from the Prefect UI"  # the UI's Run buttons create runs with it


def trigger_of(tags: list[str], deployment_id: str | None, first_message: str | None = None) -> str:
    """How a run was started: ``schedule`` (the scheduler), ``ui`` (the UI), ``api``
    (any other call of a deployment), ``cli``, or ``batch`` (an item of ``run-notebooks``,
    tagged by it).

    The UI is known by the first state it gives a run: its Run buttons say
    ``UI_RUN_MESSAGE``; its custom run forms (V1's and V2's) send the form's message
    field, empty unless typed in. An API call sends no message (``None``) unless it
    chooses one.
    """
    for tag in tags:
        if tag.startswith("trigger:"):
            return tag.removeprefix("trigger:")
    if "auto-scheduled" in tags:
        return "schedule"
    if not deployment_id:
        return "cli"
    if first_message is not None and (
        first_message == "" or first_message.startswith(UI_RUN_MESSAGE)
    ):
        return "ui"
    return "api"


def current_deployment_id() -> str | None:
    """This flow run's own deployment, if any, read from the run context.

    ``prefect.runtime.deployment.get_id()`` asks the API with a blocking call (about
    60 ms, holding up the event loop) whenever a run has no deployment, so on every
    local run, and answers a subflow with its parent's deployment.
    """
    context = FlowRunContext.get()
    found = context.flow_run.deployment_id if context and context.flow_run else None
    return str(found) if found else None


FAILED_TAG = "failed:"  # ``failed: cell 3 ValueError``, in the run page's header


async def label_run(
    run_id: str,
    notebook: Any,
    name: str | None = None,
    tick: str | None = None,
    repair_of: str | None = None,
) -> tuple[str, list[str]]:
    """Tag the flow run with its notebook and trigger, so hundreds of runs stay browsable
    (and drop a ``failed:`` tag an earlier attempt of a retried run left). A scheduled or
    backfill run named by us gets the tick it is for in its name: ``report 2026-01-05 · 9c3f2a``.
    A repair is tagged ``repair-of:<id>`` and named for the run it repairs.

    Returns:
        The trigger (``cli``, ``api``, ``ui``, ``schedule``, ``batch``), and the run's tags.
    """
    tags = list(flow_run.get_tags())
    deployment_id = current_deployment_id()
    async with get_client() as client:
        first_message = None
        if trigger_of(tags, deployment_id) == "api":  # or the UI: its first state says
            states = await client.read_flow_run_states(UUID(run_id))
            if states:
                first_message = min(states, key=lambda state: state.timestamp).message
        trigger = trigger_of(tags, deployment_id, first_message)
        wanted = [COMMON_TAG, f"notebook:{notebook_label(notebook, name)}", f"trigger:{trigger}"]
        if repair_of:
            wanted.append(f"{REPAIR_TAG}{repair_of}")
        labelled = [t for t in tags if not t.startswith(FAILED_TAG)]
        labelled += [tag for tag in wanted if tag not in labelled]
        renamed = _series_name(run_id, trigger, tick)
        if repair_of and not renamed:
            renamed = readable_name(
                notebook, {}, run_id, name, f"repair of {repair_of[-ID_CHARS:]}"
            )
        if labelled != tags or renamed:
            await client.update_flow_run(UUID(run_id), tags=labelled, name=renamed)
    context = FlowRunContext.get()
    if renamed and context is not None and context.flow_run is not None:
        context.flow_run.name = renamed  # what the summary and the history call it
    return trigger, labelled


def _series_name(run_id: str, trigger: str, tick: str | None) -> str | None:
    """The name of a scheduled or backfill run with its tick in it; ``None`` to keep it
    (another run, a name its creator chose, or one that says it already)."""
    current = str(flow_run.get_name() or "")
    if not tick or trigger not in SERIES_TRIGGERS or tick in current:
        return None
    if current and not MADE_UP_NAME.match(current) and not current.endswith(run_id[-ID_CHARS:]):
        return None
    given = flow_run.get_parameters()
    return readable_name(
        given.get("notebook"),
        given.get("parameters") or {},
        run_id,
        given.get("name"),
        tick=tick,
    )


_labelling: ContextVar[asyncio.Future[tuple[str, list[str]]] | None] = ContextVar(
    "nbjobs_labelling", default=None
)


def start_labelling(
    run_id: str,
    notebook: Any,
    name: str | None = None,
    tick: str | None = None,
    repair_of: str | None = None,
) -> asyncio.Future[tuple[str, list[str]]]:
    """Tag the run (``label_run``) beside it; ``run_trigger`` reads what it found."""
    labelling = asyncio.ensure_future(label_run(run_id, notebook, name, tick, repair_of))
    labelling.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen
    _labelling.set(labelling)
    return labelling


async def run_trigger() -> str:
    """This run's trigger, as its tags say it; only telling the UI from an API call waits
    for ``start_labelling``'s answer (its first state)."""
    known = trigger_of(list(flow_run.get_tags()), current_deployment_id())
    if known != "api":
        return known
    labelling = _labelling.get()
    if labelling is not None:
        try:
            return (await asyncio.shield(labelling))[0]
        except Exception:  # the tags could not be read or written: guess without them
            pass
    return trigger_of(list(flow_run.get_tags()), current_deployment_id())


def failure_tag(cell_index: int | None, error_name: str) -> str:
    """``failed: cell 3 ValueError``: the failure where a run page shows it at once.

    Prefect's run page shows a run's name, state and tags in its header, and the state's
    message (``cell 3: ValueError: bad value 42``) only in its Details; this tag puts
    where and what failed in the header, and in every list of runs.
    """
    where = f"cell {cell_index} " if cell_index is not None else ""
    return f"{FAILED_TAG} {where}{error_name}"[:MAX_NAME_CHARS]


async def tag_failure(run_id: str, tag: str) -> None:
    """Add ``tag`` to the run's tags, once its labelling is done (one write, not two racing)."""
    labelling = _labelling.get()
    tags = list(flow_run.get_tags())
    if labelling is not None:
        with contextlib.suppress(Exception):  # unlabelled: the tags the run started with
            tags = (await asyncio.shield(labelling))[1]
    async with get_client() as client:
        # first: V2's header shows the first three tags and "+N" for the rest
        await client.update_flow_run(UUID(run_id), tags=[tag, *tags])


async def name_this_run(name: str, tags: list[str]) -> None:
    """Name this flow run and add ``tags`` to its own: a batch's or a diff's run, named by
    what it does instead of the server's ``fine-eel``. Nothing outside a flow run."""
    run_id = flow_run.get_id()
    if not run_id:
        return
    current = [*flow_run.get_tags()]
    current += [tag for tag in tags if tag not in current]
    async with get_client() as client:
        await client.update_flow_run(UUID(run_id), name=name, tags=current)


HIDDEN_ARGUMENTS = ("parameter_order",)  # how nbjobs run sends a run, not what it asks


async def show_parameters(
    run_id: str,
    given_values: dict[str, Any],
    stored_input: str | None,
    flow_defaults: Mapping[str, Any],
) -> None:
    """Make the run's Parameters tab show what was asked of this run, and nothing else.

    ``parameters`` becomes the notebook parameters that were set (by the run or its
    deployment, merged; the notebook's own defaults are in its summary), the run's other
    arguments are shown only where they differ from the flow's defaults (a batch item
    showed 19 keys, 16 of them null or false), and a notebook sent inline becomes the
    URI of its stored copy instead of its whole JSON. A retry from the UI then runs the
    same notebook with the same values.
    """
    given = dict(flow_run.get_parameters())
    shown = {
        key: value
        for key, value in given.items()
        if key not in HIDDEN_ARGUMENTS
        and (key not in flow_defaults or value != flow_defaults[key] or key == "notebook")
    }
    shown["parameters"] = given_values
    notebook = given.get("notebook")
    if stored_input and (isinstance(notebook, dict) or str(notebook).lstrip().startswith("{")):
        shown["notebook"] = stored_input
    if shown == given:
        return
    async with get_client() as client:
        await client.update_flow_run(UUID(run_id), parameters=shown)
