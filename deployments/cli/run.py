"""``nbjobs run``: papermill's command line, run as a ``run-notebook`` flow run.

On the local server the command is a plain HTTP client of Prefect's API that follows its
run over the worker's socket (``client_run.py``) and imports no Prefect; against a server
of the user's own, the run executes in this process.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from notebook_jobs.blocks.exceptions import NotebookInputError
from notebook_jobs.deployments.cli.common import (
    MEMORY_LIMIT_HELP,
    add_parameter_options,
    duration_text,
    memory_size,
    request_parameters,
    use_local_server,
    version,
)
from notebook_jobs.deployments.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from notebook_jobs.deployments.papermill_cli import add_papermill_options


def add_parser(commands: Any) -> None:
    """``nbjobs run``'s arguments, and this module's ``handle`` as its handler."""
    run = commands.add_parser(
        "run",
        help="run a notebook as a run-notebook flow run (papermill's command line, too)",
    )
    run.add_argument("notebook", help="path, s3:// URI, http(s):// URL, or '-' for JSON on stdin")
    add_parameter_options(
        run,
        "a parameter, read as papermill reads it: an int, a float, True, False, None, "
        "else the string as typed",
        "a parameter whose value is always kept as a string",
    )
    run.add_argument("--store", help="artefact store: s3://bucket/prefix, a folder, or a block")
    run.add_argument("-k", "--kernel", help="kernel name (default: the notebook's own)")
    run.add_argument(
        "--cells", help="cells to run: indices, ranges (2-5) and tags, comma-separated"
    )
    run.add_argument("--cluster", help="a SlurmCluster block: run the notebook as a Slurm job")
    run.add_argument(
        "--input-file",
        action="append",
        default=[],
        dest="input_files",
        metavar="PATH_OR_URL",
        help="copy a file into the notebook's working folder first (repeatable)",
    )
    run.add_argument("--timeout", type=float, help="limit for the whole run, in seconds")
    run.add_argument(
        "--cell-timeout",
        "--execution-timeout",
        dest="cell_timeout",
        type=float,
        help="limit for any one cell, in seconds (the cell is interrupted)",
    )
    run.add_argument("--memory-limit", type=memory_size, metavar="SIZE", help=MEMORY_LIMIT_HELP)
    run.add_argument(
        "--keep-failed-kernel",
        metavar="DURATION",
        type=duration_text,
        help="if the run fails in a cell, keep its kernel alive this long (e.g. 30m; 0: not "
        "at all) for `nbjobs repair` to go on in it (default on the local server: 10m)",
    )
    run.add_argument(
        "--cache",
        action="store_true",
        help="reuse a completed run with the same code cells, parameters, kernel, input "
        "files and environment instead of running again",
    )
    run.add_argument(
        "--cache-expiration",
        type=float,
        metavar="SECONDS",
        help="with --cache: how long a completed run may be reused (default: while its key holds)",
    )
    run.add_argument(
        "--refresh", action="store_true", help="with --cache: run anyway, and cache this run"
    )
    run.add_argument(
        "--cache-fingerprint",
        metavar="TEXT",
        help="with --cache: the environment in the key (default: the hash of the lock file "
        "beside the notebook, else of the installed packages)",
    )
    run.add_argument(
        "--json", action="store_true", help="print result.json on stdout, nothing else"
    )
    run.add_argument(
        "-v",
        "--verbose",
        "--log-output",
        dest="verbose",
        action="store_true",
        help="show the run's log on stderr as it runs: each cell and its output",
    )
    add_papermill_options(run)
    run.add_argument("--version", action="version", version=version())
    run.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run the notebook on the local server's worker, or in this process against the
    configured server; ``--prepare-only`` and ``--help-notebook`` run nothing."""
    from notebook_jobs.deployments.papermill_cli import prepare

    args.parameter_values = prepare(args, request_parameters(args))
    if args.help_notebook:
        from notebook_jobs.deployments.light_commands import inspect_command

        return inspect_command(args)
    if args.prepare_only:
        return _prepare_only(args)
    server = use_local_server()
    if server is not None:
        from notebook_jobs.deployments.client_run import run_on_local_server

        return run_on_local_server(args, args.parameter_values, server)
    # A Prefect server of the user's own: the run executes in this process and
    # reports to it. The console handler only: the run's logs still reach the
    # server (and its UI) in full.
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    import asyncio

    from notebook_jobs.deployments.client_run import flow_parameters

    try:
        request = flow_parameters(args, args.parameter_values)
    except NotebookInputError as error:
        from notebook_jobs.deployments.report import report_refusal

        return report_refusal(type(error).__name__, str(error), args.json)
    return asyncio.run(run_here(args, request))


def _prepare_only(args: argparse.Namespace) -> int:
    """``--prepare-only``: OUTPUT gets the parameterised notebook; nothing runs."""
    from notebook_jobs.deployments.papermill_cli import prepare_only
    from notebook_jobs.deployments.report import notes_hidden, print_notes

    try:
        warnings = prepare_only(args, args.parameter_values)
    except NotebookInputError as error:
        print(f"nbjobs: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not notes_hidden(args):
        print_notes(warnings)
    return EXIT_OK


async def run_here(args: argparse.Namespace, request: dict[str, Any]) -> int:
    """Run ``request`` in this process against the configured server, and report it."""
    from prefect import tags

    from notebook_jobs.blocks.exceptions import ArtefactStoreError
    from notebook_jobs.deployments.papermill_cli import wants_progress_bar
    from notebook_jobs.deployments.progress import CellProgressBar
    from notebook_jobs.deployments.report import report_refusal, report_run
    from notebook_jobs.flows.run_notebook import run_notebook, run_outcome
    from notebook_jobs.tasks.executors import LocalExecutor
    from notebook_jobs.tasks.runtime import Runtime, using_runtime

    bar = CellProgressBar(enabled=wants_progress_bar(args))
    try:
        # one notebook, then the process exits: a fork server would cost more than it saves
        async with LocalExecutor(fork=False) as one:
            runtime = Runtime(executor=one, cell_sinks=(bar.update,))
            with tags("trigger:cli"), using_runtime(runtime):
                state = await run_notebook(**request, return_state=True)
        outcome = await run_outcome(state, request.get("store"))
    finally:
        bar.close()

    url = ui_url(state)
    if isinstance(outcome, BaseException):
        # run errors, Slurm job errors and an unreachable store carry the stored result
        document: dict[str, Any] | None = getattr(outcome, "result", None)
    else:
        document = outcome.model_dump(mode="json")
    if document is not None:
        spilled = str(outcome) if isinstance(outcome, ArtefactStoreError) else None
        return report_run(args, document, url, store_failure=spilled)
    assert isinstance(outcome, BaseException)
    return report_refusal(type(outcome).__name__, str(outcome), args.json, url)


def ui_url(state: Any) -> str | None:
    """The run's page in the Prefect UI of the configured server (the UI it defaults to)."""
    from notebook_jobs.tasks.ui_links import run_url

    run_id = state.state_details.flow_run_id
    return run_url(str(run_id)) if run_id else None
