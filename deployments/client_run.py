"""``nbjobs run`` as a client of Prefect's REST API: create the run, follow it, report.

On the embedded default the notebook runs in the local worker (``nbjobs server``),
which keeps kernels warm; this side imports neither Prefect nor papermill. It
creates a flow run of ``run-notebook/adhoc`` over HTTP, the same call any other
system makes, pokes the worker so it starts at once, follows the run's state and
logs (per-cell progress, and the cells' output with ``-v``), and prints the result
read from the store. Ctrl-C cancels the run: the worker stops the kernel and stores
the partial notebook, as for a run cancelled in the UI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blocks import exceptions
from blocks.settings import DEFAULT_STORE_ENV, absolute_store
from deployments.api import FINAL_STATES, APIError, PrefectHTTP
from deployments.local_server import LocalServer, LocalServerError

EXIT_OK = 0
EXIT_NOTEBOOK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STORE_FAILED = 3
EXIT_SERVER_FAILED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
FLOW = "run-notebook"
DEPLOYMENT = "adhoc"
STATE_POLL_SECONDS = 0.05
LOG_POLL_SECONDS = 0.25
LOG_DRAIN_SECONDS = 0.5  # the worker ships logs every 0.25 s: the last ones follow the state
_CELL_LINE = re.compile(r"^cell (\d+) \((\d+)/(\d+)\) (\w+)")
_FAILED_MESSAGE = re.compile(r"^(?:Flow run encountered an exception: )?(\w+): (.*)$", re.S)


def _is_location(text: str) -> bool:
    return text.startswith(("s3://", "http://", "https://", "{"))


def flow_parameters(args: argparse.Namespace, parameters: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters, with every local path made absolute.

    The worker runs on this machine but in its own folder, so ``report.ipynb``,
    ``--store ./runs`` and ``--input-file data.csv`` must mean what they mean here.

    Raises:
        NotebookNotFoundError: A local notebook that does not exist (refused here,
            before any run is created).
    """
    notebook: str = args.notebook
    if notebook == "-":
        notebook = sys.stdin.read()
    elif not _is_location(notebook.strip()):
        path = Path(notebook).expanduser()
        if not path.is_file():
            raise exceptions.NotebookNotFoundError(
                f"notebook not found: {notebook} (working folder {Path.cwd()})", source=notebook
            )
        notebook = str(path.resolve())
    store = args.store or os.environ.get(DEFAULT_STORE_ENV)
    request: dict[str, Any] = {
        "notebook": notebook,
        "parameters": parameters,
        "kernel": args.kernel,
        "cells": args.cells,
        "cell_timeout_seconds": args.cell_timeout,
        "timeout_seconds": args.timeout,
        "store": absolute_store(store) if store else None,
        "cluster": args.cluster,
        "input_files": [
            item if _is_location(item) else str(Path(item).expanduser().resolve())
            for item in args.input_files
        ],
    }
    return {key: value for key, value in request.items() if value not in (None, [])}


class RunFollower:
    """Turns a run's log records into terminal output: a progress bar, or the lines."""

    def __init__(self, *, bar: bool, echo: bool) -> None:
        self.echo = echo
        self.offset = 0
        self._bar: Any = None
        if bar:
            from deployments.progress import CellProgressBar  # rich: only for a terminal

            self._bar = CellProgressBar(enabled=True)

    @property
    def wants_logs(self) -> bool:
        return self.echo or self._bar is not None

    def cell(self, message: dict[str, Any]) -> None:
        """A cell event from the worker's stream."""
        if self._bar is not None:
            self._bar.advance(
                message["index"], message["done"], message["total"], message["status"]
            )

    def feed(self, records: list[dict[str, Any]], *, count: bool = True) -> None:
        """Log records (from the API, or the worker's stream with ``count=False``)."""
        if count:
            self.offset += len(records)
        for record in records:
            message = str(record.get("message", ""))
            if self._bar is not None and count:
                found = _CELL_LINE.match(message)
                if found:
                    index, done, total, status = found.groups()
                    self._bar.advance(int(index), int(done), int(total), status)
            if self.echo:
                print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def follow(
    api: PrefectHTTP,
    run_id: str,
    follower: RunFollower,
    on_interrupt: Callable[[], None],
) -> dict[str, Any]:
    """Poll the run until it reaches a final state; feed its logs to ``follower``.

    The first Ctrl-C calls ``on_interrupt`` (which asks for cancellation) and keeps
    following until the run ends; a second one leaves at once.
    """
    want_logs = follower.wants_logs
    next_logs = 0.0
    interrupted = False
    while True:
        try:
            run = api.flow_run(run_id)
            final = run.get("state") and run["state"]["type"] in FINAL_STATES
            if want_logs and (final or time.monotonic() >= next_logs):
                if final and follower.echo:
                    time.sleep(LOG_DRAIN_SECONDS)
                follower.feed(api.logs(run_id, offset=follower.offset))
                next_logs = time.monotonic() + LOG_POLL_SECONDS
            if final:
                return run
            time.sleep(STATE_POLL_SECONDS)
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            on_interrupt()


def _cancel(api: PrefectHTTP, run_id: str) -> None:
    print(f"nbjobs: cancelling run {run_id} (Ctrl-C again to leave it)", file=sys.stderr)
    state = (api.flow_run(run_id).get("state") or {}).get("type")
    if state in ("SCHEDULED", "PENDING"):
        api.set_state(run_id, "CANCELLED", "cancelled from the command line (Ctrl-C)")
    elif state not in FINAL_STATES:
        api.set_state(run_id, "CANCELLING", "cancelled from the command line (Ctrl-C)")


def refusal(message: str) -> tuple[str, str]:
    """The error name and message of a run refused before it stored anything."""
    found = _FAILED_MESSAGE.match(message.strip())
    return (found.group(1), found.group(2)) if found else ("NotebookJobError", message)


def exit_code_for(error_name: str) -> int:
    """The exit code for an error of ``blocks.exceptions`` named ``error_name``."""
    error = getattr(exceptions, error_name, None)
    if isinstance(error, type) and issubclass(error, exceptions.NotebookInputError):
        return EXIT_BAD_INPUT
    if isinstance(error, type) and issubclass(error, exceptions.ArtefactStoreError):
        return EXIT_STORE_FAILED
    return EXIT_NOTEBOOK_FAILED


def follow_channel(
    channel: Any,
    api: PrefectHTTP,
    run_id: str,
    follower: RunFollower,
    on_interrupt: Callable[[], None],
) -> dict[str, Any] | None:
    """Read the worker's stream for this run until its final message.

    Returns:
        The final message, or ``None`` when the stream ended without one, or the run
        ended unseen (the caller then asks the API).
    """
    interrupted = False
    buffered = b""
    while True:
        try:
            while b"\n" not in buffered:
                chunk = channel.recv(65536)
                if not chunk:
                    return None
                buffered += chunk
            line, buffered = buffered.split(b"\n", 1)
            message = json.loads(line)
            if message.get("event") == "result":
                return {"state": None, "document": message["document"], "interrupted": interrupted}
            if message.get("event") == "final":
                return {**message, "interrupted": interrupted}
            if message.get("event") == "cell":
                follower.cell(message)
            elif message.get("event") == "log":
                follower.feed([message], count=False)
        except TimeoutError:
            try:
                state = (api.flow_run(run_id).get("state") or {}).get("type")
            except APIError:
                continue  # the server is slow (SQLite's lock): the run goes on
            if state in FINAL_STATES:
                return None
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            on_interrupt()


def run_on_local_server(
    args: argparse.Namespace, parameters: dict[str, Any], server: LocalServer, api_url: str
) -> int:
    """``nbjobs run`` on the local server: the whole command, from request to exit code."""
    try:
        request = flow_parameters(args, parameters)
    except exceptions.NotebookInputError as error:
        return report_refusal(type(error).__name__, str(error), args.json)
    with PrefectHTTP(api_url) as api:
        try:
            deployment_id = api.deployment_id(FLOW, DEPLOYMENT)
        except APIError as error:
            if error.status_code != 404:
                raise
            raise LocalServerError(
                f"the local server has no {FLOW}/{DEPLOYMENT} deployment (deleted?); "
                "`nbjobs server stop` and run again: its worker registers it when it starts"
            ) from error
        run_id = api.trigger(
            FLOW,
            DEPLOYMENT,
            request,
            tags=["trigger:cli"],
            deployment_id=deployment_id,
            idempotency_key=f"nbjobs-run-{uuid.uuid4()}",  # safe to send again
        )
        url = f"{server.ui_url()}/runs/flow-run/{run_id}"
        follower = RunFollower(
            bar=not args.json and not args.verbose and sys.stderr.isatty(), echo=args.verbose
        )
        final: dict[str, Any] | None = None
        interrupted = [False]

        def cancel() -> None:
            interrupted[0] = True
            _cancel(api, run_id)

        channel = server.follow(run_id)
        try:
            if channel is not None:
                with channel:
                    final = follow_channel(channel, api, run_id, follower, cancel)
            if final is None:  # no worker stream: ask the API
                run = follow(api, run_id, follower, cancel)
                final = {
                    "state": run["state"]["type"],
                    "message": run["state"].get("message"),
                    "interrupted": interrupted[0],
                }
                try:
                    final["document"] = api.result(run_id)
                except (LookupError, APIError):
                    final["document"] = None
        finally:
            follower.close()
    document = final.get("document")
    if document is None:
        if final["state"] == "CANCELLED":
            print(f"nbjobs: run {run_id} was cancelled before it started; {url}", file=sys.stderr)
            return EXIT_INTERRUPTED
        failure = final.get("error") or {}
        name, message = (
            (failure["name"], failure["message"])
            if failure
            else refusal(final.get("message") or final["state"])
        )
        return report_refusal(name, message, args.json, url)
    code = report_result(document, args.json, url, interrupted=bool(final.get("interrupted")))
    failure = final.get("error") or {}
    if failure.get("name") == "ArtefactStoreError":  # kept in the spill folder: say where
        print(f"nbjobs: {failure['message']}", file=sys.stderr)
        return EXIT_STORE_FAILED
    return code


def report_result(
    document: dict[str, Any], as_json: bool, url: str | None, *, interrupted: bool = False
) -> int:
    """Print a run's result document and return the command's exit code."""
    print(json.dumps(document, indent=2) if as_json else summary(document, url))
    if interrupted and document.get("status") == "cancelled":
        return EXIT_INTERRUPTED
    if document.get("success"):
        return EXIT_OK
    error_name = (document.get("error") or {}).get("name", "")
    return EXIT_STORE_FAILED if error_name == "ArtefactStoreError" else EXIT_NOTEBOOK_FAILED


def report_refusal(name: str, message: str, as_json: bool, url: str | None = None) -> int:
    """Print why a request was refused (one line, or ``status: refused`` as JSON)."""
    if as_json:
        document = {
            "success": False,
            "status": "refused",
            "error": {"name": name, "message": message},
        }
        if url:
            document["url"] = url
        print(json.dumps(document, indent=2))
    else:
        print(f"nbjobs: {name}: {message}", file=sys.stderr)
    return exit_code_for(name)


def summary(document: dict[str, Any], url: str | None = None) -> str:
    """A readable summary of a result document."""
    artefacts = document.get("artefacts", {})
    timings = document.get("timings", {})
    lines = [
        f"{document['notebook']}: {document['status']} "
        f"in {timings.get('total_seconds', 0):.2f} s (kernel {document.get('kernel')})"
    ]
    error = document.get("error")
    if error:
        where = f" in cell {error['cell_index']}" if error.get("cell_index") is not None else ""
        lines.append(f"  error{where}: {error['name']}: {error['message']}")
    cells = document.get("cells", [])
    ran = sum(1 for c in cells if c["status"] == "ok")
    lines.append(f"  cells: {ran} of {len(cells)} ran ok")
    for name, value in document.get("outputs", {}).items():
        lines.append(f"  output {name} = {json.dumps(value)[:200]}")
    lines.append(f"  artefacts: {artefacts.get('prefix')}")
    for key in ("notebook", "html", "result"):
        if artefacts.get(key):
            lines.append(f"    {key:<8} {artefacts[key]}")
    for uri in artefacts.get("files", {}).values():
        lines.append(f"    file     {uri}")
    slurm = document.get("slurm")
    if slurm:
        lines.append(
            f"  slurm: job {slurm['job_id']} {slurm['state']} on {slurm.get('node')} "
            f"(exit code {slurm.get('exit_code')})"
        )
    for note in document.get("notes", []):
        lines.append(f"  note: {note}")
    if url:
        lines.append(f"  in the Prefect UI: {url}")
    return "\n".join(lines)
