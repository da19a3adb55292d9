"""Events and alerts: a real automation on a real Prefect server calls a real webhook.

The webhook is a plain HTTP server on 127.0.0.1; the notification goes through
Prefect's own ``CustomWebhookNotificationBlock``, sent by the server's actions service.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notebook_jobs.deployments.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from notebook_jobs.tasks.models import NotebookResult
from tests.conftest import DATA, run_flow, state_outcome
from tests.deployments.test_cli import nbjobs

WEBHOOK_WAIT_SECONDS = 90


class Webhook:
    """An HTTP server on 127.0.0.1 that keeps every body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, text: str) -> dict[str, Any]:
        deadline = time.monotonic() + WEBHOOK_WAIT_SECONDS
        while time.monotonic() < deadline:
            for body in self.bodies:
                if text in json.dumps(body):
                    return body
            time.sleep(0.5)
        raise AssertionError(f"no webhook with {text!r} in {WEBHOOK_WAIT_SECONDS} s: {self.bodies}")


@pytest.fixture
def webhook(prefect_server: str) -> Iterator[tuple[Webhook, str]]:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    hook = Webhook()
    name = f"ops-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(
        name="ops", url=hook.url, json_data={"text": "{{subject}}\n{{body}}"}
    ).save(name)
    yield hook, name
    hook.server.shutdown()


def cli_env(prefect_server: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": prefect_server}


async def automation_named(name: str) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return next(a for a in await client.read_automations() if a.name == name)


def test_an_alert_reaches_the_webhook_when_its_condition_holds_and_only_then(
    prefect_server: str, webhook: tuple[Webhook, str], tmp_path: Path
) -> None:
    hook, block = webhook
    notebook = tmp_path / f"metrics-{uuid.uuid4().hex[:6]}.ipynb"  # a notebook of its own
    notebook.write_bytes((DATA / "counts.ipynb").read_bytes())
    env = cli_env(prefect_server)
    added = nbjobs(
        "alert", "add", notebook.stem, "--when", "outputs.n > 5", "--webhook-block", block, env=env
    )
    assert added.returncode == EXIT_OK, added.stderr
    assert f"when outputs.n > 5 for a run of {notebook.stem}" in added.stdout
    listed = json.loads(nbjobs("alert", "list", "--json", env=env).stdout)
    # its description reads as two paragraphs in the UI (Markdown), not one run-on line
    automation = asyncio.run(automation_named(f"nbjobs alert: {notebook.stem} outputs.n > 5"))
    assert automation.description.endswith(
        "(edit the line below to change it).\n\nwhen outputs.n > 5"
    )
    assert {"name": f"{notebook.stem} outputs.n > 5", "when": "outputs.n > 5"}.items() <= next(
        a for a in listed if a["notebook"] == notebook.stem
    ).items()
    time.sleep(2)  # the triggers service reloads automations when they change
    marker = tmp_path / "runs.txt"

    def run(n: int) -> NotebookResult:
        state = run_flow(
            notebook=str(notebook),
            parameters={"n": n, "marker": str(marker)},
            store=str(tmp_path / "store"),
        )
        result = state_outcome(state)
        assert isinstance(result, NotebookResult)
        return result

    seven = run(7)
    body = hook.wait_for("outputs.n = 7 > 5")
    assert seven.flow_run_id in body["text"] and "notebook.html" in body["text"]
    run(3)  # does not hold: no webhook
    run(8)
    hook.wait_for("outputs.n = 8 > 5")
    assert not [b for b in hook.bodies if "outputs.n = 3" in json.dumps(b)]
    assert len(hook.bodies) == 2
    removed = nbjobs("alert", "remove", f"{notebook.stem} outputs.n > 5", env=env)
    assert removed.returncode == EXIT_OK, removed.stderr


def test_a_cell_growing_past_three_times_its_median_is_alerted(
    prefect_server: str, webhook: tuple[Webhook, str], tmp_path: Path
) -> None:
    hook, block = webhook
    notebook = tmp_path / f"slow-{uuid.uuid4().hex[:6]}.ipynb"
    notebook.write_bytes((DATA / "sleeps.ipynb").read_bytes())
    added = nbjobs(
        "alert",
        "add",
        notebook.stem,
        "--when",
        "cells[2].duration > 3x median",
        "--webhook-block",
        block,
        "--name",
        "slow cell",
        env=cli_env(prefect_server),
    )
    assert added.returncode == EXIT_OK, added.stderr
    time.sleep(2)
    for seconds in (0.05, 0.05, 0.05, 0.05, 1.0):
        state = run_flow(
            notebook=str(notebook), parameters={"seconds": seconds}, store=str(tmp_path)
        )
        assert state.is_completed()
        time.sleep(0.5)  # each run's event is stored before the next reads the history
    body = hook.wait_for("slow cell: cells[2].duration = 1.0")
    assert "> 3 x median 0.0" in body["text"] and "(last 4 runs)" in body["text"]
    assert len(hook.bodies) == 1


def test_every_run_emits_its_event_with_outputs_timings_and_masked_parameters(
    prefect_server: str, tmp_path: Path
) -> None:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventResourceFilter

    value, name = f"event-secret-{uuid.uuid4().hex}", f"ev-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(name)
    notebook = tmp_path / f"secretive-{uuid.uuid4().hex[:6]}.ipynb"
    notebook.write_bytes((DATA / "secret.ipynb").read_bytes())
    for fail in (False, True):
        run_flow(
            notebook=str(notebook),
            parameters={"password": {"$secret": name}, "fail": fail},
            store=str(tmp_path),
        )
    # refused before any kernel (no such block): a failed event all the same
    run_flow(
        notebook=str(notebook), parameters={"password": {"$secret": "gone"}}, store=str(tmp_path)
    )

    async def events() -> list[Any]:
        wanted = EventFilter(resource=EventResourceFilter(id=[f"nbjobs.notebook.{notebook.stem}"]))
        async with get_client() as client:
            return list((await client.read_events(filter=wanted, limit=10)).events)

    deadline = time.monotonic() + 30
    while len(found := asyncio.run(events())) < 3:  # the server stores events as they come
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    refused = [e for e in found if e.payload.get("refused")]
    assert [e.event for e in refused] == ["nbjobs.notebook.failed"]
    assert refused[0].payload["error"]["name"] == "SecretParameterError"
    by_name = {event.event: event for event in found if event not in refused}
    completed, failed = by_name["nbjobs.notebook.completed"], by_name["nbjobs.notebook.failed"]
    assert completed.payload["outputs"]["length"] == len(value)
    assert completed.payload["parameters"]["password"] == {"$secret": name}
    assert completed.payload["timings"]["total_seconds"] > 0
    assert [c["index"] for c in completed.payload["cells"]] == [0, 1, 2, 3, 4]
    assert failed.payload["error"]["name"] == "ValueError" and failed.payload["status"] == "failed"
    assert "flow-run" in {r.role for r in completed.related}  # no alert holds: none named
    assert "nbjobs-alert" not in {r.role for r in completed.related}
    assert value not in json.dumps([e.model_dump(mode="json") for e in found])


def test_an_unreadable_condition_or_a_missing_block_is_one_line(
    prefect_server: str, webhook: tuple[Webhook, str]
) -> None:
    env = cli_env(prefect_server)
    bad = nbjobs("alert", "add", "x", "--when", "error_rate > 1", "--webhook-block", "y", env=env)
    assert bad.returncode == EXIT_BAD_INPUT and len(bad.stderr.strip().splitlines()) == 1
    assert "cannot read the condition 'error_rate > 1'; write one of: outputs.NAME" in bad.stderr
    missing = nbjobs(
        "alert", "add", "x", "--when", "status == failed", "--webhook-block", "nope", env=env
    )
    assert missing.returncode == EXIT_BAD_INPUT and len(missing.stderr.strip().splitlines()) == 1
    assert "--webhook-block nope: does not exist; notification blocks here: " in missing.stderr
    assert f"custom-webhook/{webhook[1]}" in missing.stderr


def test_the_command_line_caches_and_its_runs_emit_events(
    prefect_server: str, tmp_path: Path
) -> None:
    """``nbjobs run --cache`` in its own process: a hit, and both runs' events stored."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventResourceFilter

    notebook = tmp_path / f"cli-{uuid.uuid4().hex[:6]}.ipynb"
    notebook.write_bytes((DATA / "counts.ipynb").read_bytes())
    marker = tmp_path / "runs.txt"
    command = ["run", str(notebook), "-p", "marker", str(marker), "--store", str(tmp_path / "s")]
    first = nbjobs(*command, "--cache", "--json", env=cli_env(prefect_server))
    assert first.returncode == EXIT_OK, first.stderr
    second = nbjobs(*command, "--cache", env=cli_env(prefect_server))
    assert second.returncode == EXIT_OK, second.stderr
    first_id = json.loads(first.stdout)["flow_run_id"]
    assert f"cached: the result of run {first_id}" in second.stdout
    assert marker.read_text() == "ran\n"

    async def events() -> list[Any]:
        wanted = EventFilter(resource=EventResourceFilter(id=[f"nbjobs.notebook.{notebook.stem}"]))
        async with get_client() as client:
            return list((await client.read_events(filter=wanted, limit=10)).events)

    deadline = time.monotonic() + 30
    while len(found := asyncio.run(events())) < 2:
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    assert sorted(str(e.payload["cached_from"]) for e in found) == sorted([first_id, "None"])
