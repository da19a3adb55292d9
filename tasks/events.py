"""Every finished run as a Prefect event, and the alerts that hold for it.

A run ends with one event, ``nbjobs.notebook.completed`` (or ``.failed``,
``.cancelled``), whose resource is the notebook (``nbjobs.notebook.<name>``) and whose
payload holds the status, the error, the glued outputs, the parameters (secrets as
their references), the timings, the kernel's peak memory and each cell's duration and
peak memory. Prefect's automations act on it as on any event.

An alert made by ``nbjobs alert add`` is a Prefect automation that waits for this
event with a related resource ``nbjobs.alert.<slug>`` (role ``nbjobs-alert``). Its
condition (``outputs.error_rate > 0.05``) is kept in the automation's description;
before emitting, the run reads the automations for its notebook, evaluates their
conditions on its own payload (and, for ``K x median``, on the notebook's earlier
events) and names each alert that holds as a related resource, with what held in
``payload.alerts``. So Prefect matches, notifies and records; we only compare numbers.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect.client.orchestration import get_client
from prefect.events import emit_event

from notebook_jobs.blocks.exceptions import AlertConditionError
from notebook_jobs.tasks.conditions import evaluate, parse_condition
from notebook_jobs.tasks.models import NotebookResult

EVENT_PREFIX = "nbjobs.notebook"
ALERT_ROLE = "nbjobs-alert"
ALERT_PREFIX = "nbjobs alert: "  # the automations nbjobs makes are named so
HISTORY_DAYS = 30
AUTOMATIONS_PAGE = 200
MAX_OUTPUT_JSON_BYTES = 10_000  # a larger glued output is left out of the event
_CONDITION_LINE = re.compile(r"^when (?P<when>.+)$", re.MULTILINE)


def notebook_resource_id(label: str) -> str:
    """The event resource of a notebook: ``nbjobs.notebook.daily-metrics``."""
    return f"{EVENT_PREFIX}.{label}"


def alert_resource_id(slug: str) -> str:
    """The related resource a run's event names an alert by: ``nbjobs.alert.<slug>``."""
    return f"nbjobs.alert.{slug}"


def event_name(result: NotebookResult) -> str:
    """``nbjobs.notebook.completed``, ``.failed`` (a timeout, a dead kernel too), ``.cancelled``."""
    if result.success:
        return f"{EVENT_PREFIX}.completed"
    return f"{EVENT_PREFIX}.{'cancelled' if result.status == 'cancelled' else 'failed'}"


def event_payload(result: NotebookResult) -> dict[str, Any]:
    """What a run's event carries: nothing a stored copy does not already show."""
    outputs: dict[str, Any] = {}
    left_out: list[str] = []
    for name, value in result.outputs.items():
        if len(json.dumps(value, default=str)) <= MAX_OUTPUT_JSON_BYTES:
            outputs[name] = value
        else:
            left_out.append(name)
    error = result.error
    return {
        "status": result.status,
        "notebook": result.notebook,
        "flow_run_id": result.flow_run_id,
        "error": (
            {"name": error.name, "message": error.message, "cell_index": error.cell_index}
            if error
            else None
        ),
        "outputs": outputs,
        "outputs_left_out": left_out,
        "parameters": result.parameters_used or result.parameters,
        "kernel": result.kernel,
        "timings": result.timings.model_dump(mode="json"),
        "resources": result.resources.model_dump(mode="json"),
        "cells": [
            {
                "index": c.index,
                "status": c.status,
                "duration_seconds": c.duration_seconds,
                "peak_memory_bytes": c.peak_memory_bytes,
            }
            for c in result.cells
        ],
        "cached_from": result.cached_from,
        "links": {
            kind: url
            for kind, url in result.artefacts.links.items()
            if kind in ("notebook", "html", "result")
        },
    }


def alert_condition(description: str) -> str | None:
    """The condition an alert's automation keeps in its description (``when ...``)."""
    found = _CONDITION_LINE.search(description or "")
    return found.group("when").strip() if found else None


def _labels(specification: Any) -> list[dict[str, Any]]:
    """A trigger's ``match`` or ``match_related`` as plain dicts (a spec, or a list of them)."""
    items = specification if isinstance(specification, list) else [specification]
    return [dict(getattr(item, "root", item) or {}) for item in items if item is not None]


def alert_of(automation: Any) -> dict[str, Any] | None:
    """An nbjobs alert's notebook, ``slug``, ``name`` and ``when``; ``None`` for others."""
    trigger = automation.trigger
    matched = _labels(getattr(trigger, "match", None))
    related = [
        labels
        for labels in _labels(getattr(trigger, "match_related", None))
        if labels.get("prefect.resource.role") == ALERT_ROLE
    ]
    when = alert_condition(automation.description)
    if not matched or not related or not when:
        return None
    notebook = str(matched[0].get("prefect.resource.id", "")).removeprefix(f"{EVENT_PREFIX}.")
    resource = str(related[0].get("prefect.resource.id", ""))
    return {
        "notebook": notebook,
        "slug": resource.removeprefix("nbjobs.alert."),
        "name": automation.name,
        "when": when,
        "enabled": automation.enabled,
        "id": str(automation.id),
    }


# the alerts read while the run's notebook runs (``read_alerts_ahead``), for its event
_read_ahead: ContextVar[asyncio.Future[list[dict[str, Any]]] | None] = ContextVar(
    "nbjobs_alerts_read_ahead", default=None
)


def read_alerts_ahead() -> None:
    """Start reading the alerts now, beside the run: its event then names those that
    hold without one more API call between the notebook's end and the run's. Alerts
    added while the notebook runs apply from the next run."""
    ahead = asyncio.ensure_future(read_alerts())
    ahead.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen
    _read_ahead.set(ahead)


async def read_alerts() -> list[dict[str, Any]]:
    """Every nbjobs alert on the server (one API call)."""
    automations: list[Any] = []
    async with get_client() as client:
        while True:  # the server answers at most its page size (200) at a time
            page = await client.read_automations(limit=AUTOMATIONS_PAGE, offset=len(automations))
            automations += page
            if len(page) < AUTOMATIONS_PAGE:
                break
    return [found for automation in automations if (found := alert_of(automation))]


async def alerts_for(label: str) -> list[dict[str, Any]]:
    """The enabled nbjobs alerts on this notebook (read ahead, if they were)."""
    ahead = _read_ahead.get()
    found: list[dict[str, Any]] | None = None
    if ahead is not None:
        try:
            found = await asyncio.shield(ahead)
        except Exception:  # read again below: the server may be back
            found = None
    if found is None:
        found = await read_alerts()
    return [a for a in found if a["notebook"] == label and a["enabled"]]


async def history_of(label: str, runs: int) -> list[dict[str, Any]]:
    """The payloads of the notebook's last completed runs, newest first."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventOrder,
        EventResourceFilter,
    )

    now = datetime.now(timezone.utc)
    wanted = EventFilter(
        occurred=EventOccurredFilter(since=now - timedelta(days=HISTORY_DAYS), until=now),
        event=EventNameFilter(name=[f"{EVENT_PREFIX}.completed"]),
        resource=EventResourceFilter(id=[notebook_resource_id(label)]),
        order=EventOrder.DESC,
    )
    async with get_client() as client:
        page = await client.read_events(filter=wanted, limit=min(3 * runs, 200))
    # cache hits ran nothing: their durations would pull the median down
    return [dict(e.payload) for e in page.events if not e.payload.get("cached_from")]


async def emit_run_event(result: NotebookResult, label: str, run_name: str | None) -> list[str]:
    """Emit a finished run's event, naming the alerts that hold for it.

    Returns:
        What held, one line per alert (also logged by the caller).
    """
    return await emit_payload(event_name(result), event_payload(result), label, run_name)


async def emit_refusal_event(
    error: BaseException, label: str, run_id: str | None, run_name: str | None
) -> list[str]:
    """Emit ``nbjobs.notebook.failed`` for a run that ended before it had a result
    (refused before any kernel started: a missing Secret block, a bad parameter...).

    Its parameters are left out: a refused value may be one that must not travel.
    """
    payload: dict[str, Any] = {
        "status": "failed",
        "notebook": label,
        "flow_run_id": run_id,
        "error": {"name": type(error).__name__, "message": str(error), "cell_index": None},
        "refused": True,
        "outputs": {},
        "outputs_left_out": [],
        "parameters": None,
        "kernel": None,
        "timings": None,
        "cells": [],
        "cached_from": None,
        "links": {},
    }
    return await emit_payload(f"{EVENT_PREFIX}.failed", payload, label, run_name)


async def emit_payload(
    name: str, payload: dict[str, Any], label: str, run_name: str | None
) -> list[str]:
    """Emit one event about the notebook ``label``; alerts that hold are related resources.

    The event is emitted even when the alerts cannot be read (their error is raised
    after it): the notebook's history must not miss a run.
    """
    related = []
    if payload.get("flow_run_id"):
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{payload['flow_run_id']}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": run_name or str(payload["flow_run_id"]),
            }
        )
    held: dict[str, str] = {}
    failure: Exception | None = None
    try:
        for slug, line, alert_name in await _alerts_that_hold(payload, label):
            held[slug] = line
            related.append(
                {
                    "prefect.resource.id": alert_resource_id(slug),
                    "prefect.resource.role": ALERT_ROLE,
                    "prefect.resource.name": alert_name,
                }
            )
    except Exception as error:  # the event goes out without alerts; the caller logs why
        failure = error
    payload["alerts"] = held
    emit_event(
        event=name,
        resource={
            "prefect.resource.id": notebook_resource_id(label),
            "prefect.resource.name": label,
            "nbjobs.notebook": str(payload.get("notebook") or label),
        },
        related=related,
        payload=payload,
    )
    if failure is not None:
        raise failure
    return list(held.values())


async def _alerts_that_hold(payload: dict[str, Any], label: str) -> list[tuple[str, str, str]]:
    """``(slug, line, automation name)`` of each alert on the notebook that holds."""
    alerts = []
    for alert in await alerts_for(label):
        try:
            alerts.append((alert, parse_condition(alert["when"])))
        except AlertConditionError:
            continue  # edited into something unreadable in the UI: it matches nothing
    runs = max((condition.runs for _, condition in alerts if condition.needs_history), default=0)
    # this run's own event is not emitted yet: the history is the runs before it
    history = await history_of(label, runs) if runs else []
    found = []
    for alert, condition in alerts:
        if payload.get("cached_from") and (
            condition.subject == "duration" or condition.cell is not None
        ):
            continue  # a cache hit ran nothing: its durations are the cached run's
        line = evaluate(condition, payload, history)
        if line is None:
            continue
        name = alert["name"].removeprefix(ALERT_PREFIX)
        # an alert named by default is its notebook and condition: the line says both
        shown = label if name == f"{label} {condition.text}" else name
        found.append((alert["slug"], f"{shown}: {line}", alert["name"]))
    return found


__all__ = [
    "ALERT_PREFIX",
    "ALERT_ROLE",
    "alert_resource_id",
    "emit_payload",
    "emit_refusal_event",
    "emit_run_event",
    "event_payload",
    "read_alerts",
]
