"""``nbjobs runs``: a notebook's history in the terminal, as its ``-history`` artifact shows it.

``nbjobs runs report`` prints the last runs of ``report`` newest first, its glued values
as columns with their change from the run before; ``--json`` the same as JSON;
``--output total`` one value only. ``nbjobs runs`` alone lists every notebook with a
history and its last run. Read from Prefect (``tasks/history.py``), so it shows what the
UI shows, whichever door each run came through. Given the notebook's path, the runs'
parameters equal to its defaults are left out, as in the UI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from notebook_jobs.deployments.exit_codes import EXIT_BAD_INPUT, EXIT_OK

DEFAULT_LAST = 20
VALUE_CHARS = 24  # a glued value's column, at most


def add_parser(commands: Any) -> None:
    """``nbjobs runs [NOTEBOOK] [--last N] [--json] [--output NAME]``."""
    runs = commands.add_parser(
        "runs",
        help="a notebook's last runs with their outputs (no NOTEBOOK: every notebook's last run)",
    )
    runs.set_defaults(handler=handle)
    runs.add_argument(
        "notebook",
        nargs="?",
        help="the notebook's name (report) or its path (examples/report.ipynb)",
    )
    runs.add_argument(
        "--last",
        type=int,
        default=DEFAULT_LAST,
        metavar="N",
        help="runs shown (default %(default)s)",
    )
    runs.add_argument("--json", action="store_true", help="the runs as JSON, newest first")
    runs.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="NAME",
        help="only this output (repeatable)",
    )


def runs_command(args: argparse.Namespace) -> int:
    """Run ``nbjobs runs`` (Prefect is configured: the caller saw to it)."""
    if args.last < 1:
        print("nbjobs: --last must be 1 or more", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.notebook is None:
        return asyncio.run(_notebooks(args))
    return asyncio.run(_history(args))


async def _notebooks(args: argparse.Namespace) -> int:
    from notebook_jobs.tasks.history import last_runs

    found = await last_runs()
    if args.json:
        print(json.dumps(found, indent=2))
        return EXIT_OK
    if not found:
        print("no notebook has run on this server yet")
        return EXIT_OK
    rows = [
        [f["notebook"], _when(f["started"]), f["status"] or "", f["history"] or ""] for f in found
    ]
    print(_table(["notebook", "last run (UTC)", "status", "history"], rows))
    return EXIT_OK


async def _history(args: argparse.Namespace) -> int:
    from notebook_jobs.flows.run_labels import notebook_label
    from notebook_jobs.tasks.history import read_history
    from notebook_jobs.tasks.history_table import (
        output_columns,
        started_by,
        value_text,
        with_changes,
        without_defaults,
    )

    label = notebook_label(args.notebook)
    runs = with_changes(await read_history(label, args.last))
    without_defaults(runs, _defaults(args.notebook))
    if not runs:
        print(
            f"nbjobs: no finished runs of {label!r} on this server; `nbjobs runs` lists the "
            "notebooks that have some",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    columns = args.output or output_columns(runs)
    if args.json:
        documents = [run.as_json() for run in runs]
        if args.output:
            for document in documents:
                document["outputs"] = {
                    k: v for k, v in document["outputs"].items() if k in args.output
                }
        print(json.dumps(documents, indent=2, default=str))
        return EXIT_OK
    series = any(run.for_tick for run in runs)  # a scheduled notebook: the tick each is for
    rows = []
    for run in runs:
        status = run.status
        if run.error and not run.succeeded:
            status += f": {_cut(run.error, 60)}"
        rows.append(
            [
                *([run.for_tick] if series else []),
                _when(run.started.isoformat() if run.started else None),
                started_by(run),
                f"{run.seconds:.2f}" if run.seconds is not None else "",
                *[
                    _cut(value_text(run.outputs[name], run.changes.get(name)), VALUE_CHARS)
                    if name in run.outputs
                    else ""
                    for name in columns
                ],
                run.id,
                status,
            ]
        )
    print(f"{label}: the last {len(runs)} runs, newest first")
    header = [*(["for"] if series else []), "started (UTC)", "by", "seconds", *columns]
    print(_table([*header, "run", "status"], rows))
    return EXIT_OK


def _defaults(notebook: str) -> dict[str, Any] | None:
    """The parameter defaults of the notebook file ``notebook`` names, if it is one: the
    runs' parameters equal to them are left out, as the UI's history leaves them."""
    path = Path(notebook)
    if not path.is_file():
        return None
    import nbformat

    from notebook_jobs.tasks.engine.staging import notebook_defaults

    try:
        return notebook_defaults(nbformat.read(path, as_version=4))
    except Exception:  # not a notebook we can read: every parameter is shown
        return None


def _when(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] if iso else ""


def _cut(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [len(name) for name in header]
    for row in rows:
        widths = [max(width, len(str(cell))) for width, cell in zip(widths, row, strict=True)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    )


def handle(args: argparse.Namespace) -> int:
    """``nbjobs runs``, on the local server when no Prefect server is configured."""
    from notebook_jobs.deployments.cli.common import use_local_server

    use_local_server()
    return runs_command(args)
