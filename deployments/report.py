"""What ``nbjobs run`` prints and the exit code it ends with, however the run went.

The same for a run on the local server and one executed in the ``nbjobs`` process.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, TextIO

from notebook_jobs.blocks import exceptions
from notebook_jobs.blocks.exceptions import APIError
from notebook_jobs.deployments.api import fetch
from notebook_jobs.deployments.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_NOTEBOOK_FAILED,
    EXIT_OK,
    EXIT_SERVER_FAILED,
    EXIT_STORE_FAILED,
)
from notebook_jobs.deployments.papermill_cli import deliver

_FAILED_MESSAGE = re.compile(r"^(?:Flow run encountered an exception: )?(\w+): (.*)$", re.S)


def refusal(message: str) -> tuple[str, str]:
    """The error name and message of a run refused before it stored anything."""
    found = _FAILED_MESSAGE.match(message.strip())
    return (found.group(1), found.group(2)) if found else ("NotebookJobError", message)


def exit_code_for(error_name: str) -> int:
    """The exit code for an error named ``error_name``: 2 for a request refused, 1 for a
    notebook that ran and failed, 3 for the store, and 4 for the rest, our own
    infrastructure (the server, the worker, Slurm's submission, an error we did not
    expect)."""
    error = getattr(exceptions, error_name, None)
    if not isinstance(error, type):
        return EXIT_SERVER_FAILED
    if issubclass(error, (exceptions.NotebookInputError, exceptions.SettingsError)):
        return EXIT_BAD_INPUT
    if issubclass(error, exceptions.ArtefactStoreError):
        return EXIT_STORE_FAILED
    if issubclass(error, exceptions.KernelStartError):  # no cell ran: the kernel's fault
        return EXIT_SERVER_FAILED
    if issubclass(error, (exceptions.NotebookRunError, exceptions.BatchError)):
        return EXIT_NOTEBOOK_FAILED
    return EXIT_SERVER_FAILED


def report_run(
    args: argparse.Namespace,
    document: dict[str, Any],
    url: str | None,
    *,
    interrupted: bool = False,
    store_failure: str | None = None,
) -> int:
    """``nbjobs run``'s ending: write OUTPUT and the stream files, print, exit code.

    Returns:
        As ``report_result``; a run whose OUTPUT could not be written ends with 3.
    """
    link = (document.get("artefacts") or {}).get("links", {}).get("notebook")
    notebook = None
    if link and (args.output or args.stdout_file or args.stderr_file):  # else not needed
        try:
            notebook = fetch(link).content
        except APIError as error:
            print(f"nbjobs: could not read the stored notebook: {error}", file=sys.stderr)
    problem = deliver(args, notebook)
    code = report_result(
        document,
        args.json,
        url,
        interrupted=interrupted,
        store_failure=store_failure,
        out=sys.stderr if args.output == "-" else sys.stdout,
        quiet=notes_hidden(args),
    )
    if problem is not None:
        print(f"nbjobs: {problem}", file=sys.stderr)
        return code if code != EXIT_OK else EXIT_STORE_FAILED
    return code


def report_result(
    document: dict[str, Any],
    as_json: bool,
    url: str | None,
    *,
    interrupted: bool = False,
    store_failure: str | None = None,
    out: TextIO | None = None,
    quiet: bool = False,
) -> int:
    """Print a run's result document and return the command's exit code.

    Args:
        document: The result document (``result.json``).
        as_json: Print the document itself, not the summary.
        url: The run's page in the Prefect UI.
        interrupted: Ctrl-C cancelled the run.
        store_failure: Why the store failed, when the artefacts went to the spill folder.
        out: Where the summary goes (stdout, or stderr when the notebook goes there).
        quiet: Leave out the notes, which go to stderr as papermill's warnings do
            (papermill's ``--log-level ERROR`` hides them).

    Returns:
        The exit code (``deployments/exit_codes.py``).
    """
    if not as_json and not quiet:
        print_notes(document.get("notes", []))
    print(json.dumps(document, indent=2) if as_json else summary(document, url), file=out)
    if store_failure is not None:
        print(f"nbjobs: {store_failure}", file=sys.stderr)
        return EXIT_STORE_FAILED
    if interrupted and document.get("status") == "cancelled":
        return EXIT_INTERRUPTED
    if document.get("success"):
        return EXIT_OK
    error_name = (document.get("error") or {}).get("name", "")
    if error_name in ("ArtefactStoreError", "KernelStartError"):
        return exit_code_for(error_name)
    return EXIT_NOTEBOOK_FAILED  # whatever the notebook raised: its own error's name


def notes_hidden(args: argparse.Namespace) -> bool:
    """Papermill's ``--log-level ERROR`` (or ``CRITICAL``) hides its warnings: our notes."""
    return bool(args.log_level in ("ERROR", "CRITICAL"))


def print_notes(notes: list[str]) -> None:
    """The notes on stderr, as papermill logs its warnings, apart from the notebook's output."""
    for note in notes:
        print(f"nbjobs: note: {note}", file=sys.stderr)


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
    if document.get("cached_from"):
        key = (document.get("cache") or {}).get("key", "")
        lines[0] += f", cached: the result of run {document['cached_from']} (key {key[:16]})"
    repaired = document.get("repaired_from")
    if repaired:
        lines.append(
            f"  repair of run {repaired['flow_run_id']} from cell {repaired['from_cell']} "
            f"({repaired['mode']})"
        )
    error = document.get("error")
    if error:
        where = f" in cell {error['cell_index']}" if error.get("cell_index") is not None else ""
        lines.append(f"  error{where}: {error['name']}: {error['message']}")
    cells = document.get("cells", [])
    ran = sum(1 for c in cells if c["status"] == "ok")
    again = sum(1 for c in cells if c.get("re_executed"))
    lines.append(
        f"  cells: {ran} of {len(cells)} ran ok" + (f" ({again} run again first)" if again else "")
    )
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
    if url:
        lines.append(f"  in the Prefect UI: {url}")
    if error and error.get("cell_index") is not None and document.get("flow_run_id"):
        lines.append(
            f"  once fixed, go on from cell {error['cell_index']}: "
            f"nbjobs repair {document['flow_run_id']}"
        )
    return "\n".join(lines)
