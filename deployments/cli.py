"""``nbjobs``: the flows, exposed to a terminal as deployments expose them to HTTP.

    nbjobs run NOTEBOOK [OUTPUT] [-p NAME VALUE]... [-r NAME VALUE]... [-y YAML]...
                        [-f FILE]... [-b BASE64]... [--store S] [-k KERNEL] [--cells SEL]
                        [--timeout S] [--cell-timeout S] [--cluster BLOCK]
                        [--input-file PATH]... [--json] [-v | --log-output]
                        [every other option of papermill's CLI: papermill_cli.py]
    nbjobs inspect NOTEBOOK [--json]
    nbjobs deploy NOTEBOOK --name NAME [--cron EXPR | --every DURATION] [--timezone TZ]
                           [--on-overlap queue|skip|cancel-new] [--catch-up all|latest|none]
                           [-p NAME VALUE]... [--store S] [--pool P] [--concurrency-limit N]
    nbjobs backfill DEPLOYMENT --start DATE --end DATE [--every DURATION]
                               [--max-concurrency N] [--skip-completed] [--dry-run]
    nbjobs backfill DEPLOYMENT --cancel ID
    nbjobs serve [--pool P] [--limit N] [--isolation in-process|process]
    nbjobs server start|stop|status [--json]
    nbjobs retry-uploads

With no Prefect server configured (no ``PREFECT_API_URL``, no profile naming one),
``run`` and ``deploy`` use the local server (``deployments/local_server.py``), started
on first use and reused; ``run`` is then a plain HTTP client and imports no Prefect.

Exit codes: 0 the notebook ran to the end; 1 it raised, timed out or killed its
kernel (its partial notebook is stored); 2 the request was refused before any
kernel started (bad notebook, parameter, kernel...); 3 the artefact store failed;
4 the local Prefect server could not start; 130 interrupted (Ctrl-C cancelled the run).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import TYPE_CHECKING, Any

from notebook_jobs.blocks.exceptions import NotebookInputError, OptionError
from notebook_jobs.deployments.cli_parser import build_parser
from notebook_jobs.deployments.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER_FAILED,
    EXIT_STORE_FAILED,
)

if TYPE_CHECKING:
    from notebook_jobs.deployments.local_server import LocalServer

WORKER_SETTINGS = {
    # Prefect's worker polls every 10 s by default; a notebook job should start at once.
    # Set before Prefect is imported: it reads its settings at import.
    "PREFECT_WORKER_QUERY_SECONDS": "0.5",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    # heartbeats let the server mark runs of a killed worker Crashed (see commands.py)
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nbjobs`` console script."""
    args = build_parser().parse_args(argv)
    from notebook_jobs.blocks.exceptions import (
        APIError,
        EndpointServerError,
        LocalServerError,
        NotebookInputError,
        SettingsError,
    )

    try:
        return _dispatch(args)
    except (SettingsError, NotebookInputError) as error:  # what to fix, in one line
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (LocalServerError, EndpointServerError) as error:
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_SERVER_FAILED
    except APIError as error:
        where = os.environ.get("PREFECT_API_URL", "the Prefect server")
        print(f"nbjobs: {where} did not answer as expected: {error}", file=sys.stderr)
        return EXIT_SERVER_FAILED
    except KeyboardInterrupt:
        print("nbjobs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `nbjobs run ... | head -1`: the reader left; the run is stored
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return EXIT_BROKEN_PIPE


def _use_local_server() -> LocalServer | None:
    """The local server, started if need be, when no Prefect server is configured; else None.

    Sets ``PREFECT_API_URL`` for this process (before Prefect is imported) so that
    Prefect's own client talks to it.
    """
    from notebook_jobs.deployments.local_server import LocalServer
    from notebook_jobs.deployments.local_state import configured_api_url

    if configured_api_url() is not None:
        return None
    server = LocalServer()
    from notebook_jobs.deployments.light_commands import announce

    os.environ["PREFECT_API_URL"] = server.ensure(announce=announce)
    auth_string = server.auth_string()
    if auth_string:
        os.environ["PREFECT_API_AUTH_STRING"] = auth_string
    return server


def _dispatch(args: argparse.Namespace) -> int:
    import asyncio  # 70 ms: only for the commands that run Prefect in this process

    if args.command == "inspect":
        from notebook_jobs.deployments.light_commands import inspect_command

        return inspect_command(args)
    if args.command == "server":
        from notebook_jobs.deployments.light_commands import server_command

        return server_command(args)
    if args.command == "retry-uploads":
        return _retry_uploads()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.command == "serve":
        from notebook_jobs.deployments.local_state import configured_api_url

        if configured_api_url() is None:
            print(
                "nbjobs: serve runs a worker for a Prefect server: set PREFECT_API_URL to "
                "it. (Without one, the local server has its own worker: `nbjobs server status`.)",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        for key, value in WORKER_SETTINGS.items():
            os.environ.setdefault(key, value)
        from pathlib import Path

        from notebook_jobs.blocks.settings import settings
        from notebook_jobs.deployments.commands import serve

        socket = Path(args.local_socket) if args.local_socket else None
        kernel_pool = settings().kernel_pool if args.kernel_pool is None else args.kernel_pool
        with contextlib.ExitStack() as files:
            if args.files_port is not None or args.files_fd is not None:
                import socket as sockets

                from notebook_jobs.deployments.file_server import FILES_URL_ENV, serving_files

                bound = None if args.files_fd is None else sockets.socket(fileno=args.files_fd)
                try:
                    os.environ[FILES_URL_ENV] = files.enter_context(
                        serving_files(args.files_port or 0, bound=bound)
                    )
                except OSError as error:
                    print(
                        f"nbjobs: cannot serve files on 127.0.0.1:{args.files_port} "
                        f"({error.strerror}); choose another --files-port",
                        file=sys.stderr,
                    )
                    return EXIT_BAD_INPUT
            asyncio.run(
                serve(args.pool, args.limit, args.isolation, socket, kernel_pool, args.adhoc)
            )
        return EXIT_OK
    if args.command in ("run", "deploy"):  # a bad option or value: main() says so, exit 2
        args.parameter_values = _request_parameters(args)
        if args.command == "run":
            from notebook_jobs.deployments.papermill_cli import prepare

            args.parameter_values = prepare(args, args.parameter_values)
    if args.command == "run" and args.help_notebook:
        from notebook_jobs.deployments.light_commands import inspect_command

        return inspect_command(args)
    if args.command == "run" and args.prepare_only:
        return _prepare_only(args)
    if args.command == "diff":
        return asyncio.run(_diff(args))
    if args.command == "endpoints":
        from notebook_jobs.deployments.endpoints import endpoints_command

        _use_local_server()
        return endpoints_command(args)
    if args.command == "runs":
        from notebook_jobs.deployments.runs_command import runs_command

        _use_local_server()
        return runs_command(args)
    if args.command == "backfill":
        from notebook_jobs.deployments.backfill import backfill_command

        return backfill_command(args, _use_local_server())
    if args.command == "alert":
        from notebook_jobs.deployments.alerts import alert_command

        _use_local_server()
        return alert_command(args)
    if args.command == "deploy":
        args.api_was_set = _use_local_server() is None
        return asyncio.run(_deploy(args))
    if args.command == "run":
        server = _use_local_server()
        if server is not None:
            from notebook_jobs.deployments.client_run import run_on_local_server

            return run_on_local_server(args, args.parameter_values, server)
        # A Prefect server of the user's own: the run executes in this process and
        # reports to it. The console handler only: the run's logs still reach the
        # server (and its UI) in full.
        if not args.verbose:
            os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        return asyncio.run(_run(args))
    return EXIT_BAD_INPUT


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


def _retry_uploads() -> int:
    from notebook_jobs.tasks.store.spill import retry_spilled_uploads

    outcomes = retry_spilled_uploads()
    if not outcomes:
        print("nothing to upload")
    for folder, error in outcomes:
        print(f"{folder.name}: {'uploaded' if error is None else 'still spilled: ' + error}")
    return EXIT_STORE_FAILED if any(error for _, error in outcomes) else EXIT_OK


async def _diff(args: argparse.Namespace) -> int:
    import json

    from notebook_jobs.tasks.engine.compare import comparison_markdown

    if any(not ref.endswith(".json") for ref in (args.run_a, args.run_b)):
        _use_local_server()  # run ids are looked up on the server
    from notebook_jobs.flows.run_diff import compare

    try:
        found = await compare(args.run_a, args.run_b)
    except NotebookInputError as error:
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(found, indent=2, default=str) if args.json else comparison_markdown(found))
    return EXIT_OK


async def _deploy(args: argparse.Namespace) -> int:
    from notebook_jobs.blocks.exceptions import ArtefactStoreError
    from notebook_jobs.deployments.commands import deploy_notebook
    from notebook_jobs.deployments.definitions import DeploymentOptions
    from notebook_jobs.tasks.engine.run_context import duration_seconds

    try:
        every = duration_seconds(args.every) if args.every else None
    except ValueError as error:
        raise OptionError(f"--every {error}") from None
    options = DeploymentOptions(
        defaults=args.parameter_values,
        store=args.store,
        fixed={
            "kernel": args.kernel,
            "cluster": args.cluster,
            "cache": args.cache or None,
            "cache_expiration_seconds": args.cache_expiration,
        },
        allow=tuple(name.strip() for name in args.allow.split(",") if name.strip()),
        cron=args.cron,
        interval_seconds=every,
        timezone=args.timezone,
        pool=args.pool,
        concurrency_limit=args.concurrency_limit,
        on_overlap=args.on_overlap,
        catch_up=args.catch_up,
    )
    try:
        deployed = await deploy_notebook(args.notebook, name=args.name, options=options)
    except ArtefactStoreError as error:
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_STORE_FAILED
    names = ", ".join(p["name"] for p in deployed.parameters) or "none"
    print(f"deployment {deployed.name} ({deployed.deployment_id})")
    print(f"  version  {deployed.version}")
    print(f"  notebook {deployed.notebook_uri}")
    print(f"  parameters: {names}")
    if options.scheduled:
        print(f"  schedule: {args.cron or 'every ' + args.every} ({args.timezone})")
        overlap = args.on_overlap or "both run (--on-overlap to choose)"
        print(f"  overlap:  {overlap}; missed ticks: {args.catch_up or 'all'} run")
    local = "" if args.api_was_set else f"PREFECT_API_URL={os.environ['PREFECT_API_URL']} "
    print(f"  run it:  {local}prefect deployment run '{deployed.name}' -p parameters='{{...}}'")
    return EXIT_OK


def _request_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's parameters, as papermill reads them.

    Raises:
        OptionError: A -y/-f/-b value cannot be read, or a value cannot travel as JSON.
    """
    from notebook_jobs.deployments.papermill_args import read_parameters

    parameters = read_parameters(
        p=args.parameters,
        r=args.parameters_raw,
        y=args.parameters_yaml,
        f=args.parameters_file,
        b=args.parameters_base64,
    )
    for name, block in args.secret:
        parameters[name] = {"$secret": block}  # tasks/engine/secrets.py: a reference
    for name, value in parameters.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(
                f"parameter {name!r} is {value}: papermill would inject float({str(value)!r}), "
                "but NaN and infinity cannot travel as JSON to the run yet; "
                f"-r {name} {value} passes the string"
            )
    return parameters


async def _run(args: argparse.Namespace) -> int:
    from prefect import tags

    from notebook_jobs.blocks.exceptions import ArtefactStoreError
    from notebook_jobs.deployments.client_run import flow_parameters
    from notebook_jobs.deployments.papermill_cli import wants_progress_bar
    from notebook_jobs.deployments.progress import CellProgressBar
    from notebook_jobs.deployments.report import report_refusal, report_run
    from notebook_jobs.flows.run_notebook import run_notebook, run_outcome
    from notebook_jobs.tasks.executors import LocalExecutor, using_executor
    from notebook_jobs.tasks.notebook import add_progress_listener, remove_progress_listener

    try:
        request = flow_parameters(args, args.parameter_values)
    except NotebookInputError as error:
        return report_refusal(type(error).__name__, str(error), args.json)
    bar = CellProgressBar(enabled=wants_progress_bar(args))
    add_progress_listener(bar.update)
    try:
        # one notebook, then the process exits: a fork server would cost more than it saves
        async with LocalExecutor(fork=False) as one:
            with tags("trigger:cli"), using_executor(one):
                state = await run_notebook(**request, return_state=True)
        outcome = await run_outcome(state, request.get("store"))
    finally:
        remove_progress_listener(bar.update)
        bar.close()

    url = _ui_url(state)
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


def _ui_url(state: Any) -> str | None:
    """The run's page in the Prefect UI of the configured server (the UI it defaults to)."""
    from notebook_jobs.tasks.ui_links import run_url

    run_id = state.state_details.flow_run_id
    return run_url(str(run_id)) if run_id else None


if __name__ == "__main__":
    sys.exit(main())
