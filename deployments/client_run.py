"""``nbjobs run`` as a client of Prefect's REST API: create the run, follow it, report.

On the embedded default the notebook runs in the local worker (``nbjobs server``),
which keeps kernels warm; this side imports neither Prefect nor papermill. It
creates a flow run of ``run-notebook/adhoc`` over HTTP, the same call any other
system makes, then follows it on the worker's socket, which starts the run at once
and streams its cell progress, its log (shown with ``-v``) and its result; where the
socket cannot be reached it polls the API instead. Ctrl-C cancels the run: the
worker stops the kernel and stores the partial notebook, as for a run cancelled in
the UI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from notebook_jobs.blocks import exceptions
from notebook_jobs.blocks.exceptions import APIError, LocalServerError
from notebook_jobs.blocks.settings import DEFAULT_STORE_ENV, absolute_store
from notebook_jobs.deployments.api import FINAL_STATES, PrefectHTTP
from notebook_jobs.deployments.exit_codes import (
    EXIT_INTERRUPTED,
)
from notebook_jobs.deployments.local_server import LocalServer
from notebook_jobs.deployments.names import GENERAL_DEPLOYMENT
from notebook_jobs.deployments.papermill_cli import wants_progress_bar
from notebook_jobs.deployments.report import refusal, report_refusal, report_run
from notebook_jobs.tasks.names import RUN_FLOW
from notebook_jobs.tasks.ui_links import run_url

KEEP_FAILED_KERNEL = "10m"  # `nbjobs run` on the local server: for `nbjobs repair`
FLOW = RUN_FLOW
DEPLOYMENT = GENERAL_DEPLOYMENT
STATE_POLL_SECONDS = 0.05
LOG_POLL_SECONDS = 0.25
LOG_DRAIN_SECONDS = 0.5  # the worker ships logs every 0.25 s: the last ones follow the state
_CELL_LINE = re.compile(r"^cell (\d+) \((\d+)/(\d+)\) (\w+)")


def is_location(text: str) -> bool:
    return text.startswith(("s3://", "http://", "https://", "{"))


def caller_environment() -> dict[str, str]:
    """This command's environment as its caller gave it: what the run's kernel gets on
    top of the worker's (the server's address and login were set by this command)."""
    ours = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")
    return {k: v for k, v in os.environ.items() if k not in ours}


def local_notebook(notebook: str) -> str:
    """``notebook`` as the worker must read it: a local path made absolute (the worker
    runs on this machine, in a folder of its own); a URI or the JSON itself as given.

    Raises:
        NotebookNotFoundError: A local notebook that does not exist (refused here,
            before any run is created).
    """
    if is_location(notebook.strip()):
        return notebook
    path = Path(notebook).expanduser()
    if not path.is_file():
        raise exceptions.NotebookNotFoundError(
            f"notebook not found: {notebook} (working folder {Path.cwd()})", source=notebook
        )
    return str(path.resolve())


def local_files(items: list[str]) -> list[str]:
    """Input files as the worker must read them: local paths made absolute."""
    return [item if is_location(item) else str(Path(item).expanduser().resolve()) for item in items]


def parameter_order(parameters: dict[str, Any]) -> list[str] | None:
    """The order to inject ``parameters`` in: the server's PostgreSQL keeps none in
    them, and papermill injects them in the caller's."""
    return list(parameters) if len(parameters) > 1 else None


def flow_parameters(args: argparse.Namespace, parameters: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters, with every local path made absolute.

    The worker runs on this machine but in its own folder, so ``report.ipynb``,
    ``--store ./runs`` and ``--input-file data.csv`` must mean what they mean here.

    Raises:
        NotebookNotFoundError: A local notebook that does not exist (refused here,
            before any run is created).
    """
    notebook = sys.stdin.read() if args.notebook == "-" else local_notebook(args.notebook)
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
        "input_files": local_files(args.input_files),
        "cwd": args.cwd,  # made absolute, or the notebook's folder: papermill_cli.prepare
        "language": args.language,
        "report_mode": args.report_mode,
        "start_timeout_seconds": args.start_timeout,
        "memory_limit": args.memory_limit,
        "keep_failed_kernel": args.keep_failed_kernel,
        "strict_parameters": args.strict_parameters,
        "cache": args.cache or args.refresh,
        "cache_expiration_seconds": args.cache_expiration,
        "refresh_cache": args.refresh,
        "cache_fingerprint": args.cache_fingerprint,
        "parameter_order": parameter_order(parameters),
    }
    # left out when unset; not `in (None, [], False)`, which would drop a 0 too (0 == False)
    return {
        key: value
        for key, value in request.items()
        if value is not None and value is not False and value != []
    }


class RunFollower:
    """Turns a run's log records into terminal output: a progress bar, or the lines."""

    def __init__(self, *, bar: bool, echo: bool) -> None:
        self.echo = echo
        self.offset = 0
        self._bar: Any = None
        if bar:
            from notebook_jobs.deployments.progress import (
                CellProgressBar,  # rich: only for a terminal
            )

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


class Interrupts:
    """Ctrl-C while a run is followed: the first asks for cancellation and following
    goes on until the run ends (its partial notebook stored); the second leaves."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        self.count = 0
        self.cancel_sent = False
        self._cancel = cancel

    def press(self) -> None:
        """Called from ``except KeyboardInterrupt``.

        Raises:
            KeyboardInterrupt: On the second press: the caller stops following.
        """
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        self._cancel()  # a second Ctrl-C meanwhile leaves before it is sent
        self.cancel_sent = True


def follow(
    api: PrefectHTTP, run_id: str, follower: RunFollower, interrupts: Interrupts
) -> dict[str, Any]:
    """Poll the run until it reaches a final state; feed its logs to ``follower``.

    Returns:
        The flow run as the API last gave it (in a final state).
    """
    want_logs = follower.wants_logs
    next_logs = 0.0
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
            interrupts.press()


def _cancel(api: PrefectHTTP, run_id: str) -> None:
    """Cancel a run that has not started outright; ask a running one's worker to stop it."""
    print(f"nbjobs: cancelling run {run_id} (Ctrl-C again to leave it)", file=sys.stderr)
    api.cancel(run_id, "cancelled from the command line (Ctrl-C)")


def follow_channel(
    channel: socket.socket,
    api: PrefectHTTP,
    run_id: str,
    follower: RunFollower,
    interrupts: Interrupts,
) -> dict[str, Any] | None:
    """Read the worker's stream for this run until its result or final message.

    Returns:
        That message, or ``None`` when the stream ended without one, or the run ended
        unseen (the caller then asks the API).
    """
    buffered = b""
    while True:
        try:
            try:
                while b"\n" not in buffered:
                    chunk = channel.recv(65536)
                    if not chunk:
                        return None
                    buffered += chunk
            except TimeoutError:  # silence: has the run ended unseen?
                try:
                    state = (api.flow_run(run_id).get("state") or {}).get("type")
                except APIError:
                    continue  # the server is slow (SQLite's lock): the run goes on
                if state in FINAL_STATES:
                    return None
                continue
            line, buffered = buffered.split(b"\n", 1)
            message = json.loads(line)
            if message.get("event") == "result":
                return {"state": None, "document": message["document"]}
            if message.get("event") == "final":
                return dict(message)
            if message.get("event") == "cell":
                follower.cell(message)
            elif message.get("event") == "log":
                follower.feed([message], count=False)
        except KeyboardInterrupt:
            interrupts.press()


def _follow(
    api: PrefectHTTP,
    run_id: str,
    server: LocalServer,
    follower: RunFollower,
    interrupts: Interrupts,
    handed: socket.socket | None = None,
) -> dict[str, Any]:
    """Follow the run on the worker's stream (``handed``, the connection that handed the
    environment over, if any), else through the API, to its outcome."""
    while True:  # a Ctrl-C before following has begun still cancels the run
        try:
            channel = server.follow(run_id, handed)
            break
        except KeyboardInterrupt:
            interrupts.press()
    if channel is not None:
        with channel:
            found = follow_channel(channel, api, run_id, follower, interrupts)
        if found is not None:
            return found
    run = follow(api, run_id, follower, interrupts)
    state = run["state"]
    final: dict[str, Any] = {"state": state["type"], "message": state.get("message")}
    if state["type"] == "FAILED" and state.get("message"):
        name, message = refusal(state["message"])
        final["error"] = {"name": name, "message": message}
    try:
        final["document"] = api.result(run_id)
    except (LookupError, APIError):
        final["document"] = None
    return final


def hand_over(
    api: PrefectHTTP,
    server: LocalServer,
    request: dict[str, Any],
    trigger: str,
    *,
    name: str | None = None,
    tags: tuple[str, ...] = (),
    idempotency_key: str | None = None,
) -> tuple[str, socket.socket | None]:
    """Create a run of ``run-notebook/adhoc`` for the local worker, with this process's
    environment handed to it first; the run's id and the worker's connection.

    ``name``, ``tags``: the run's, beside ``trigger:<trigger>``; ``idempotency_key``:
    the caller's (the same key gives back the same run), else a new one.

    Raises:
        LocalServerError: The server refused the credentials, has no such deployment,
            or could not create the run.
    """
    try:
        deployment_id = api.deployment_id(FLOW, DEPLOYMENT)
    except APIError as error:
        if error.status_code == 401:
            raise LocalServerError(
                f"the local server refused the credentials in {server.credentials.path}; "
                "`nbjobs server stop` and run again to make new ones"
            ) from error
        if error.status_code != 404:
            raise
        raise LocalServerError(
            f"the local server has no {FLOW}/{DEPLOYMENT} deployment (deleted?); "
            "`nbjobs server stop` and run again: its worker registers it when it starts"
        ) from error
    key = idempotency_key or f"nbjobs-run-{uuid.uuid4()}"  # safe to send again
    # the kernel gets this process's environment, as papermill's does
    channel = server.hand_over(caller_environment(), key)
    try:
        run_id = api.trigger(
            FLOW,
            DEPLOYMENT,
            request,
            tags=[f"trigger:{trigger}", *tags],
            deployment_id=deployment_id,
            idempotency_key=key,
            name=name,
        )
    except APIError as error:
        if channel is not None:
            channel.close()
        raise LocalServerError(
            f"the run could not be created: {error} (one the server made after all "
            f"still runs: it shows in the UI, tagged trigger:{trigger})"
        ) from error
    return run_id, channel


def run_handed_over(server: LocalServer, request: dict[str, Any], trigger: str) -> dict[str, Any]:
    """Run ``request`` in the local worker and wait for it, for a caller that is not a
    terminal (``python_api``): a Ctrl-C cancels the run and waits for it to end.

    Returns:
        How it ended: ``state``, ``document`` (the result, if stored), ``error``.
    """
    with PrefectHTTP(server.api_url(), auth_string=server.auth_string()) as api:
        run_id, channel = hand_over(api, server, request, trigger)
        interrupts = Interrupts(lambda: _cancel(api, run_id))
        follower = RunFollower(bar=False, echo=False)
        return _follow(api, run_id, server, follower, interrupts, channel)


def run_on_local_server(
    args: argparse.Namespace,
    parameters: dict[str, Any],
    server: LocalServer,
    request: dict[str, Any] | None = None,
) -> int:
    """``nbjobs run`` on the local server: the whole command, from request to exit code.

    ``request``: the run's arguments if made already (``nbjobs repair``'s), else they
    come from ``args`` and ``parameters``.
    """
    if request is None:
        try:
            request = flow_parameters(args, parameters)
        except exceptions.NotebookInputError as error:
            return report_refusal(type(error).__name__, str(error), args.json)
        # a run typed at a terminal is the one its user repairs next: its kernel waits
        request.setdefault("keep_failed_kernel", KEEP_FAILED_KERNEL)
    with PrefectHTTP(server.api_url(), auth_string=server.auth_string()) as api:
        run_id, channel = hand_over(api, server, request, "cli")
        url = run_url(run_id, server.ui_url())
        follower = RunFollower(bar=wants_progress_bar(args), echo=args.verbose)
        interrupts = Interrupts(lambda: _cancel(api, run_id))
        try:
            final = _follow(api, run_id, server, follower, interrupts, channel)
        except KeyboardInterrupt:
            unsent = "" if interrupts.cancel_sent else " before asking to cancel it (it goes on)"
            print(
                f"nbjobs: stopped following run {run_id}{unsent}; see it at {url}", file=sys.stderr
            )
            return EXIT_INTERRUPTED
        finally:
            follower.close()
        final["interrupted"] = interrupts.count > 0
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
    failure = final.get("error") or {}
    return report_run(
        args,
        document,
        url,
        interrupted=bool(final.get("interrupted")),
        store_failure=failure["message"] if failure.get("name") == "ArtefactStoreError" else None,
    )
