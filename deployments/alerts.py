"""``nbjobs alert add|list|remove``: alerts on a notebook's results, as Prefect automations.

``nbjobs alert add daily-metrics --when 'outputs.error_rate > 0.05' --webhook-block ops``
creates an automation that Prefect's own triggers and actions services run: it waits
for a ``nbjobs.notebook.*`` event of that notebook naming this alert as a related
resource (the run names it when the condition holds: ``tasks/events.py``) and sends
the notification block's message. It shows, and can be paused, edited or deleted, in
the UI's Automations page like any other.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
from datetime import timedelta
from typing import Any

from notebook_jobs.blocks.exceptions import NotebookInputError
from notebook_jobs.deployments.exit_codes import EXIT_OK

NOTIFY_CAPABILITY = "notify"


def add_parser(commands: Any) -> None:
    """``nbjobs alert add|list|remove``."""
    alert = commands.add_parser(
        "alert", help="alerts on a notebook's results: Prefect automations that notify"
    )
    alert.set_defaults(handler=handle)
    actions = alert.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="notify when a condition holds for a run")
    add.add_argument("notebook", help="the notebook's name (daily-metrics), or its path")
    add.add_argument(
        "--when",
        required=True,
        metavar="CONDITION",
        help="'outputs.NAME > 0.05', 'status == failed', 'duration > 600', "
        "'cells[3].duration > 3x median' (of the last 10 completed runs; median(N) for N)",
    )
    add.add_argument(
        "--webhook-block",
        required=True,
        metavar="BLOCK",
        help="a notification block to send through (custom-webhook, slack-webhook...): "
        "its name, or TYPE/NAME",
    )
    add.add_argument("--name", help="the alert's name (default: the notebook and condition)")
    listed = actions.add_parser("list", help="the alerts, their conditions and their state")
    listed.add_argument("--json", action="store_true", help="print the alerts as JSON")
    remove = actions.add_parser("remove", help="delete an alert")
    remove.add_argument("name", help="its name, as `nbjobs alert list` shows it")


def alert_command(args: argparse.Namespace) -> int:
    """Run ``nbjobs alert ACTION`` (Prefect is configured: the caller saw to it)."""
    print(asyncio.run(_ACTIONS[args.action](args)))
    return EXIT_OK


def alert_slug(label: str, name: str) -> str:
    """A stable id for an alert: ``daily-metrics-3f2a9c`` (its notebook, and its name's hash)."""
    digest = hashlib.sha256(f"{label}\n{name}".encode()).hexdigest()[:6]
    return f"{re.sub(r'[^A-Za-z0-9_-]+', '-', label)}-{digest}"


def notification_text(slug: str) -> tuple[str, str]:
    """The notification's subject and body: Jinja templates Prefect renders with the event."""
    held = f"event.payload.alerts['{slug}']"
    subject = "nbjobs alert: {{ " + held + " }}"
    body = (
        "{{ " + held + " }}\n"
        "notebook: {{ event.resource['prefect.resource.name'] }} "
        "({{ event.payload.status }})\n"
        "flow run: {{ event.payload.flow_run_id }}\n"
        "executed notebook: {{ event.payload.links.html or event.payload.links.notebook }}"
    )
    return subject, body


async def _notification_block(spec: str) -> Any:
    """The notification block document named ``spec`` (``NAME`` or ``TYPE/NAME``).

    Raises:
        NotebookInputError: No such block, or one that cannot notify.
    """
    from prefect import get_client

    type_slug, _, name = spec.rpartition("/")
    async with get_client() as client:
        documents = await client.read_block_documents(include_secrets=False)
    found = [
        d
        for d in documents
        if d.name == name and (not type_slug or (d.block_type and d.block_type.slug == type_slug))
    ]
    notifiers = [
        d for d in found if d.block_schema and NOTIFY_CAPABILITY in d.block_schema.capabilities
    ]
    if notifiers:
        return notifiers[0]
    usable = sorted(
        f"{d.block_type.slug}/{d.name}"
        for d in documents
        if d.block_type and d.block_schema and NOTIFY_CAPABILITY in d.block_schema.capabilities
    )
    what = "is not a notification block" if found else "does not exist"
    raise NotebookInputError(
        f"--webhook-block {spec}: {what}; notification blocks here: {', '.join(usable) or 'none'}"
        " (make one: CustomWebhookNotificationBlock(name=..., url=...).save(NAME))"
    )


async def _add(args: argparse.Namespace) -> str:
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification

    from notebook_jobs.flows.run_labels import notebook_label
    from notebook_jobs.tasks.conditions import parse_condition
    from notebook_jobs.tasks.events import (
        ALERT_PREFIX,
        ALERT_ROLE,
        alert_resource_id,
        notebook_resource_id,
    )

    condition = parse_condition(args.when)  # AlertConditionError: exit 2, one line
    label = notebook_label(args.notebook)
    name = args.name or f"{label} {condition.text}"
    block = await _notification_block(args.webhook_block)
    slug = alert_slug(label, name)
    subject, body = notification_text(slug)
    automation = Automation(
        name=f"{ALERT_PREFIX}{name}",
        description=(
            f"Made by `nbjobs alert add` for the notebook {label}: a run's "
            "nbjobs.notebook.* event names this alert when the condition holds "
            "(edit the line below to change it).\n\n"  # a paragraph each: the UI renders Markdown
            f"when {condition.text}"
        ),
        trigger=EventTrigger(
            expect={"nbjobs.notebook.*"},
            match={"prefect.resource.id": notebook_resource_id(label)},
            match_related={
                "prefect.resource.role": ALERT_ROLE,
                "prefect.resource.id": alert_resource_id(slug),
            },
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block.id, subject=subject, body=body)],
    )
    created = await automation.acreate()
    return (
        f"alert {name!r} added (automation {created.id}): when {condition.text} for a run of "
        f"{label}, {block.block_type.slug}/{block.name} is notified"
    )


async def _alerts() -> list[dict[str, Any]]:
    from notebook_jobs.tasks.events import ALERT_PREFIX, read_alerts

    return [{**a, "name": a["name"].removeprefix(ALERT_PREFIX)} for a in await read_alerts()]


async def _list(args: argparse.Namespace) -> str:
    found = await _alerts()
    if args.json:
        return json.dumps(found, indent=2)
    if not found:
        return "no alerts (nbjobs alert add NOTEBOOK --when CONDITION --webhook-block BLOCK)"
    return "\n".join(
        f"{a['name']}: {a['notebook']} when {a['when']}"
        + ("" if a["enabled"] else " (paused)")
        + f"  [{a['id']}]"
        for a in found
    )


async def _remove(args: argparse.Namespace) -> str:
    from uuid import UUID

    from prefect import get_client

    matching = [a for a in await _alerts() if args.name in (a["name"], a["id"])]
    if not matching:
        raise NotebookInputError(f"no alert named {args.name!r}; `nbjobs alert list` shows them")
    async with get_client() as client:
        for alert in matching:
            await client.delete_automation(UUID(alert["id"]))
    return f"alert {args.name!r} removed"


_ACTIONS = {"add": _add, "list": _list, "remove": _remove}

__all__ = ["add_parser", "alert_command", "alert_slug", "handle", "notification_text"]


def handle(args: argparse.Namespace) -> int:
    """``nbjobs alert``, on the local server when no Prefect server is configured."""
    from notebook_jobs.deployments.cli.common import use_local_server

    use_local_server()
    return alert_command(args)
