"""``nbjobs``: the flows, exposed to a terminal as deployments expose them to HTTP.

    nbjobs run NOTEBOOK [-p NAME VALUE]... [-r NAME VALUE]... [--store S] [--kernel K]
                        [--cells SEL] [--timeout S] [--cell-timeout S] [--cluster BLOCK]
                        [--input-file PATH]... [--json]
    nbjobs inspect NOTEBOOK [--json]
    nbjobs deploy NOTEBOOK --name NAME [--cron EXPR [--timezone TZ]] [-p NAME VALUE]...
                           [--store S] [--pool P] [--concurrency-limit N]
    nbjobs serve [--pool P] [--limit N] [--isolation in-process|process]
    nbjobs retry-uploads

Exit codes: 0 the notebook ran to the end; 1 it raised, timed out or killed its
kernel (its partial notebook is stored); 2 the request was refused before any
kernel started (bad notebook, parameter, kernel...); 3 the artefact store failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

WORKER_SETTINGS = {
    # Prefect's worker polls every 10 s by default; a notebook job should start at once.
    # Set before Prefect is imported: it reads its settings at import.
    "PREFECT_WORKER_QUERY_SECONDS": "0.5",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    # heartbeats let the server mark runs of a killed worker Crashed (see commands.py)
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}
EXIT_OK = 0
EXIT_NOTEBOOK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STORE_FAILED = 3


def parse_value(text: str) -> Any:
    """Read a ``-p`` value as papermill does: JSON (number, bool, null, list, object)
    where it parses as one, Python's True/False/None too, else the string itself."""
    python_words = {"True": True, "False": False, "None": None}
    if text in python_words:
        return python_words[text]

    def refuse_constant(name: str) -> Any:
        raise ValueError(name)  # NaN and Infinity are not JSON: keep them as strings

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except ValueError:
        return text


def _add_parameter_options(parser: argparse.ArgumentParser, p_help: str, r_help: str) -> None:
    """``-p NAME VALUE`` (read as JSON where it parses) and ``-r NAME VALUE`` (raw)."""
    for short, long, text in (("-p", "--parameter", p_help), ("-r", "--raw", r_help)):
        parser.add_argument(
            short, long, nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help=text
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``nbjobs`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nbjobs", description="Run Jupyter notebooks as Prefect flows."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a notebook as a run-notebook flow run")
    run.add_argument("notebook", help="path, s3:// URI, http(s):// URL, or '-' for JSON on stdin")
    _add_parameter_options(
        run,
        "a parameter; the value is read as JSON where it parses, else kept as a string",
        "a parameter whose value is always kept as a string",
    )
    run.add_argument("--store", help="artefact store: s3://bucket/prefix, a folder, or a block")
    run.add_argument("--kernel", help="kernel name (default: the notebook's own)")
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
    run.add_argument("--cell-timeout", type=float, help="limit for any one cell, in seconds")
    run.add_argument(
        "--json", action="store_true", help="print result.json on stdout, nothing else"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs")

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
        "a default for a notebook parameter (read as with nbjobs run)",
        "a default kept as a string",
    )
    deploy.add_argument("--store", help="where the notebook and its runs' artefacts are stored")
    deploy.add_argument("--pool", default="notebook-jobs", help="process work pool")
    deploy.add_argument("--concurrency-limit", type=int, help="most runs at the same time")

    commands.add_parser(
        "retry-uploads",
        help="upload the artefacts of runs whose store was unreachable ($NBJOBS_HOME/spill)",
    )

    serve = commands.add_parser(
        "serve", help="register the deployments and run them on this machine (a process worker)"
    )
    serve.add_argument("--pool", default="notebook-jobs", help="process work pool")
    serve.add_argument("--limit", type=int, help="most flow runs at the same time")
    serve.add_argument(
        "--kernel-pool",
        type=int,
        default=2,
        metavar="N",
        help="kernels kept started ahead of demand, one per run (0: off; in-process only)",
    )
    serve.add_argument(
        "--isolation",
        choices=["in-process", "process"],
        default="in-process",
        help="run notebook flow runs inside this process (fast; each notebook still has its "
        "own kernel) or each in a Python subprocess",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nbjobs`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "retry-uploads":
        return _retry_uploads()
    if args.command in ("deploy", "serve"):
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        if args.command == "serve":
            for key, value in WORKER_SETTINGS.items():
                os.environ.setdefault(key, value)
            if args.isolation == "in-process" and args.kernel_pool > 0:
                os.environ["NBJOBS_KERNEL_POOL"] = str(args.kernel_pool)
            else:  # a subprocess per run would start a pool per run
                os.environ.pop("NBJOBS_KERNEL_POOL", None)
            from deployments.commands import serve

            asyncio.run(serve(args.pool, args.limit, args.isolation))
            return EXIT_OK
        return asyncio.run(_deploy(args))
    if args.command == "run":
        # Before Prefect is imported. The console handler only: the run's logs still
        # reach the Prefect server (and the UI) in full.
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # one kernel in this process: a fork server would cost more than it saves
        os.environ.setdefault("NBJOBS_KERNEL_LAUNCHER", "spawn")
        if not args.verbose:
            os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        return asyncio.run(_run(args))
    return EXIT_BAD_INPUT


def _retry_uploads() -> int:
    from tasks.storage import retry_spilled_uploads

    outcomes = retry_spilled_uploads()
    if not outcomes:
        print("nothing to upload")
    for folder, error in outcomes:
        print(f"{folder.name}: {'uploaded' if error is None else 'still spilled: ' + error}")
    return EXIT_STORE_FAILED if any(error for _, error in outcomes) else EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from blocks.exceptions import NotebookInputError
    from tasks.staging import declared_parameters, fetch_notebook_source, parse_notebook

    try:
        nb = parse_notebook(fetch_notebook_source(args.notebook))
        parameters = declared_parameters(nb)
    except NotebookInputError as error:
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(parameters, indent=2))
        return EXIT_OK
    if not parameters:
        print("no parameters (the notebook has no cell tagged 'parameters')")
        return EXIT_OK
    width = max(len(p["name"]) for p in parameters)
    for p in parameters:
        kind = p["type"] or "?"
        comment = f"  # {p['help']}" if p["help"] else ""
        print(f"{p['name']:<{width}}  {kind:<8} = {p['default']}{comment}")
    return EXIT_OK


async def _deploy(args: argparse.Namespace) -> int:
    from blocks.exceptions import ArtefactStoreError, NotebookInputError
    from deployments.commands import deploy_notebook

    try:
        deployed = await deploy_notebook(
            args.notebook,
            name=args.name,
            defaults=_request_parameters(args),
            store=args.store,
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
    print(f"  run it:  prefect deployment run '{deployed.name}' -p parameters='{{...}}'")
    return EXIT_OK


def _request_parameters(args: argparse.Namespace) -> dict[str, Any]:
    parameters: dict[str, Any] = {name: parse_value(value) for name, value in args.parameter}
    parameters.update({name: value for name, value in args.raw})
    return parameters


async def _run(args: argparse.Namespace) -> int:
    from prefect import tags

    from blocks.exceptions import ArtefactStoreError, NotebookInputError
    from deployments.progress import CellProgressBar
    from flows.run_notebook import run_notebook, run_outcome
    from tasks.notebook import add_progress_listener, remove_progress_listener

    notebook: str | dict[str, Any] = args.notebook
    if args.notebook == "-":
        notebook = sys.stdin.read()
    bar = CellProgressBar(enabled=not args.json and sys.stderr.isatty())
    add_progress_listener(bar.update)
    try:
        with tags("trigger:cli"):
            state = await run_notebook(
                notebook=notebook,
                parameters=_request_parameters(args),
                kernel=args.kernel,
                cells=args.cells,
                cell_timeout_seconds=args.cell_timeout,
                timeout_seconds=args.timeout,
                store=args.store,
                cluster=args.cluster,
                input_files=args.input_files,
                return_state=True,
            )
        outcome = await run_outcome(state, args.store)
    finally:
        remove_progress_listener(bar.update)
        bar.close()

    document: dict[str, Any] | None = None
    if isinstance(outcome, BaseException):
        # run errors, Slurm job errors and an unreachable store carry the stored result
        document = getattr(outcome, "result", None)
    else:
        document = outcome.model_dump(mode="json")

    if document is not None:
        if args.json:
            print(json.dumps(document, indent=2))
        else:
            print(_summary(document))
        if isinstance(outcome, ArtefactStoreError):
            print(f"nbjobs: {outcome}", file=sys.stderr)
            return EXIT_STORE_FAILED
        return EXIT_OK if document.get("success") else EXIT_NOTEBOOK_FAILED

    assert isinstance(outcome, BaseException)
    message = f"{type(outcome).__name__}: {outcome}"
    if args.json:
        print(
            json.dumps(
                {
                    "success": False,
                    "status": "refused",
                    "error": {"name": type(outcome).__name__, "message": str(outcome)},
                },
                indent=2,
            )
        )
    else:
        print(f"nbjobs: {message}", file=sys.stderr)
    if isinstance(outcome, NotebookInputError):
        return EXIT_BAD_INPUT
    if isinstance(outcome, ArtefactStoreError):
        return EXIT_STORE_FAILED
    return EXIT_NOTEBOOK_FAILED


def _summary(document: dict[str, Any]) -> str:
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
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
