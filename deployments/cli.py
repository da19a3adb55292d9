"""``nbjobs``: the flows, exposed to a terminal as deployments expose them to HTTP.

    nbjobs run NOTEBOOK [OUTPUT] [-p NAME VALUE]... [-r NAME VALUE]... [-y YAML]...
                        [-f FILE]... [-b BASE64]... [--store S] [-k KERNEL] [--cells SEL]
                        [--timeout S] [--cell-timeout S] [--cluster BLOCK]
                        [--input-file PATH]... [--json] [-v | --log-output]
                        [every other option of papermill's CLI: papermill_cli.py]
    nbjobs inspect NOTEBOOK [--json]
    nbjobs deploy NOTEBOOK --name NAME [--cron EXPR [--timezone TZ]] [-p NAME VALUE]...
                           [--store S] [--pool P] [--concurrency-limit N]
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

from notebook_jobs.deployments.alerts import add_alert_parser
from notebook_jobs.deployments.endpoints import add_endpoints_parser
from notebook_jobs.deployments.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER_FAILED,
    EXIT_STORE_FAILED,
)
from notebook_jobs.deployments.papermill_cli import add_papermill_options

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


def _add_parameter_options(parser: argparse.ArgumentParser, p_help: str, r_help: str) -> None:
    """Papermill's parameter options, with papermill's names (``deployments/papermill_args.py``)."""
    for flags, text in (
        (("-p", "--parameters", "--parameter"), p_help),
        (("-r", "--parameters_raw", "--raw"), r_help),
    ):
        parser.add_argument(
            *flags,
            dest=flags[1].removeprefix("--"),
            nargs=2,
            action="append",
            default=[],
            metavar=("NAME", "VALUE"),
            help=text,
        )
    parser.add_argument(
        "-s",
        "--secret",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "BLOCK"),
        help="a secret parameter: the value of this Prefect Secret block, loaded by the "
        "run and masked in everything it stores and shows",
    )
    yaml_options: tuple[tuple[tuple[str, str], str], ...] = (
        (("-y", "--parameters_yaml"), "parameters as a YAML mapping"),
        (("-f", "--parameters_file"), "a YAML file of parameters"),
        (("-b", "--parameters_base64"), "parameters as base64-encoded YAML"),
    )
    for yaml_flags, yaml_help in yaml_options:
        parser.add_argument(
            *yaml_flags, action="append", default=[], metavar="YAML", help=yaml_help
        )


def version() -> str:
    """``nbjobs X.Y.Z``, from the installed distribution."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return f"nbjobs {installed('notebook-jobs')}"
    except PackageNotFoundError:
        return "nbjobs (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``nbjobs`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nbjobs", description="Run Jupyter notebooks as Prefect flows."
    )
    parser.add_argument("--version", action="version", version=version())
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run a notebook as a run-notebook flow run (papermill's command line, too)",
    )
    run.add_argument("notebook", help="path, s3:// URI, http(s):// URL, or '-' for JSON on stdin")
    _add_parameter_options(
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

    inspect = commands.add_parser("inspect", help="list a notebook's parameters")
    inspect.add_argument("notebook")
    inspect.add_argument("--json", action="store_true", help="print the parameters as JSON")

    deploy = commands.add_parser(
        "deploy", help="make a deployment for one notebook, typed by its parameters cell"
    )
    deploy.add_argument("notebook", help="path, s3:// URI or http(s):// URL of the notebook")
    deploy.add_argument("--name", required=True, help="deployment name (run-notebook/NAME)")
    deploy.add_argument("--cron", help="cron schedule, e.g. '0 3 * * *'")
    deploy.add_argument("--timezone", default="UTC", help="IANA time zone of the cron schedule")
    _add_parameter_options(
        deploy,
        "a default for a notebook parameter (read as papermill reads -p)",
        "a default kept as a string",
    )
    deploy.add_argument("--store", help="where the notebook and its runs' artefacts are stored")
    deploy.add_argument("-k", "--kernel", help="the kernel every run uses")
    deploy.add_argument("--cluster", help="a SlurmCluster block: every run is a Slurm job")
    deploy.add_argument(
        "--allow",
        default="",
        metavar="NAMES",
        help="technical parameters callers may set, comma-separated (e.g. "
        "timeout_seconds,cells); all others are fixed to this deployment's values",
    )
    deploy.add_argument(
        "--cache",
        action="store_true",
        help="every run reuses a completed run with the same cache key (README: cached runs)",
    )
    deploy.add_argument(
        "--cache-expiration", type=float, metavar="SECONDS", help="with --cache: how long"
    )
    deploy.add_argument("--pool", default="notebook-jobs", help="process work pool")
    deploy.add_argument("--concurrency-limit", type=int, help="most runs at the same time")

    diff = commands.add_parser(
        "diff", help="what changed between two runs: parameters, outputs, cells, text, files"
    )
    diff.add_argument("run_a", help="a flow run id, or the path or URI of a result.json")
    diff.add_argument("run_b", help="the run to compare with, the same way")
    diff.add_argument("--json", action="store_true", help="print the comparison as JSON")

    commands.add_parser(
        "retry-uploads",
        help="upload the artefacts of runs whose store was unreachable ($NBJOBS_HOME/spill)",
    )

    serve = commands.add_parser(
        "serve", help="register the deployments and run them on this machine (a process worker)"
    )
    serve.add_argument("--pool", default="notebook-jobs", help="process work pool")
    serve.add_argument("--limit", type=int, help="most flow runs at the same time")
    adhoc = serve.add_mutually_exclusive_group()
    adhoc.add_argument(
        "--allow-adhoc",
        dest="adhoc",
        action="store_const",
        const=True,
        help="register run-notebook/adhoc (runs any notebook it is sent) even when the API "
        "is reachable beyond this machine without auth",
    )
    adhoc.add_argument(
        "--no-adhoc",
        dest="adhoc",
        action="store_const",
        const=False,
        help="do not serve run-notebook/adhoc (an earlier one is removed)",
    )
    serve.add_argument(
        "--kernel-pool",
        type=int,
        metavar="N",
        help="kernels kept started ahead of demand, one per run (0: off; in-process only; "
        "default: $NBJOBS_KERNEL_POOL, else 2)",
    )
    serve.add_argument(
        "--files-port",
        type=int,
        metavar="PORT",
        help="serve the runs' local-store artefacts read-only on 127.0.0.1:PORT, so their "
        "links in the Prefect UI open in a browser on this machine (signed links only)",
    )
    # the local server's worker: `nbjobs run` follows its runs here (deployments/worker.py)
    serve.add_argument("--local-socket", help=argparse.SUPPRESS)
    serve.add_argument(
        "--isolation",
        choices=["in-process", "process"],
        default="in-process",
        help="run notebook flow runs inside this process (fast; each notebook still has its "
        "own kernel) or each in a Python subprocess",
    )

    add_endpoints_parser(commands)
    add_alert_parser(commands)

    server = commands.add_parser(
        "server",
        help="the local Prefect server and worker that run and record notebooks on this machine",
    )
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument("--json", action="store_true", help="status as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nbjobs`` console script."""
    args = build_parser().parse_args(argv)
    from notebook_jobs.blocks.exceptions import (
        EndpointServerError,
        LocalServerError,
        NotebookInputError,
        SettingsError,
    )
    from notebook_jobs.deployments.api import APIError

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
    from notebook_jobs.deployments.local_server import LocalServer, configured_api_url

    if configured_api_url() is not None:
        return None
    server = LocalServer()
    from notebook_jobs.deployments.light_commands import announce

    os.environ["PREFECT_API_URL"] = server.ensure(announce=announce)
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
        from notebook_jobs.deployments.local_server import configured_api_url

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
            if args.files_port is not None:
                from notebook_jobs.deployments.file_server import FILES_URL_ENV, serving_files

                try:
                    os.environ[FILES_URL_ENV] = files.enter_context(serving_files(args.files_port))
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
    if args.command in ("run", "deploy"):
        try:
            args.parameter_values = _request_parameters(args)
            if args.command == "run":
                from notebook_jobs.deployments.papermill_cli import prepare

                args.parameter_values = prepare(args, args.parameter_values)
        except ValueError as error:  # OptionError too
            print(f"nbjobs: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
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
    from notebook_jobs.blocks.exceptions import NotebookInputError
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

    from notebook_jobs.blocks.exceptions import NotebookInputError
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
    from notebook_jobs.blocks.exceptions import ArtefactStoreError, NotebookInputError
    from notebook_jobs.deployments.commands import deploy_notebook

    try:
        deployed = await deploy_notebook(
            args.notebook,
            name=args.name,
            defaults=args.parameter_values,
            store=args.store,
            fixed={
                "kernel": args.kernel,
                "cluster": args.cluster,
                "cache": args.cache or None,
                "cache_expiration_seconds": args.cache_expiration,
            },
            allow=[name.strip() for name in args.allow.split(",") if name.strip()],
            cron=args.cron,
            timezone=args.timezone if args.cron else None,
            pool=args.pool,
            concurrency_limit=args.concurrency_limit,
        )
    except NotebookInputError as error:
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ArtefactStoreError as error:
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_STORE_FAILED
    names = ", ".join(p["name"] for p in deployed.parameters) or "none"
    print(f"deployment {deployed.name} ({deployed.deployment_id})")
    print(f"  version  {deployed.version}")
    print(f"  notebook {deployed.notebook_uri}")
    print(f"  parameters: {names}")
    if args.cron:
        print(f"  schedule: {args.cron} ({args.timezone})")
    local = "" if args.api_was_set else f"PREFECT_API_URL={os.environ['PREFECT_API_URL']} "
    print(f"  run it:  {local}prefect deployment run '{deployed.name}' -p parameters='{{...}}'")
    return EXIT_OK


def _request_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's parameters, as papermill reads them.

    Raises:
        ValueError: A -y/-f/-b value cannot be read, or a value cannot travel as JSON.
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
            raise ValueError(
                f"parameter {name!r} is {value}: papermill would inject float({str(value)!r}), "
                "but NaN and infinity cannot travel as JSON to the run yet; "
                f"-r {name} {value} passes the string"
            )
    return parameters


async def _run(args: argparse.Namespace) -> int:
    from prefect import tags

    from notebook_jobs.blocks.exceptions import ArtefactStoreError, NotebookInputError
    from notebook_jobs.deployments.client_run import flow_parameters
    from notebook_jobs.deployments.papermill_cli import wants_progress_bar
    from notebook_jobs.deployments.progress import CellProgressBar
    from notebook_jobs.deployments.report import report_refusal, report_run
    from notebook_jobs.flows.run_notebook import run_notebook, run_outcome
    from notebook_jobs.tasks.notebook import add_progress_listener, remove_progress_listener

    try:
        request = flow_parameters(args, args.parameter_values)
    except NotebookInputError as error:
        return report_refusal(type(error).__name__, str(error), args.json)
    bar = CellProgressBar(enabled=wants_progress_bar(args))
    add_progress_listener(bar.update)
    try:
        with tags("trigger:cli"):
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
    """The run's page in the Prefect UI of the configured server."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    run_id = state.state_details.flow_run_id
    return f"{base.rstrip('/')}/runs/flow-run/{run_id}" if base and run_id else None


if __name__ == "__main__":
    sys.exit(main())
