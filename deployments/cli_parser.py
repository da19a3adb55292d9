"""The ``nbjobs`` command line's arguments: every subcommand and option, nothing run.

``cli.py`` reads them and dispatches; papermill's own options are added by
``papermill_cli.py``, the endpoints' and alerts' by their own modules.
"""

from __future__ import annotations

import argparse

from notebook_jobs.deployments.alerts import add_alert_parser
from notebook_jobs.deployments.backfill import add_backfill_parser
from notebook_jobs.deployments.endpoints import add_endpoints_parser
from notebook_jobs.deployments.papermill_cli import add_papermill_options
from notebook_jobs.deployments.runs_command import add_runs_parser


def add_parameter_options(parser: argparse.ArgumentParser, p_help: str, r_help: str) -> None:
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
    inspect.add_argument("notebook", help="path, s3:// URI or http(s):// URL of the notebook")
    inspect.add_argument("--json", action="store_true", help="print the parameters as JSON")

    deploy = commands.add_parser(
        "deploy", help="make a deployment for one notebook, typed by its parameters cell"
    )
    deploy.add_argument("notebook", help="path, s3:// URI or http(s):// URL of the notebook")
    deploy.add_argument("--name", required=True, help="deployment name (run-notebook/NAME)")
    schedule = deploy.add_mutually_exclusive_group()
    schedule.add_argument("--cron", help="cron schedule, e.g. '0 6 * * 1-5'")
    schedule.add_argument(
        "--every",
        metavar="DURATION",
        help="interval schedule, e.g. 30s, 15m, 1h, 1d (anchored at midnight: 1h runs on the hour)",
    )
    deploy.add_argument(
        "--timezone", default="UTC", help="IANA time zone of the schedule, e.g. Europe/Berlin"
    )
    deploy.add_argument(
        "--on-overlap",
        choices=["queue", "skip", "cancel-new"],
        help="a run that starts while an earlier one still runs: waits for it (queue), ends "
        "Cancelled saying which run is going (skip), or is cancelled by the server "
        "(cancel-new, Prefect's CANCEL_NEW); default: both run",
    )
    deploy.add_argument(
        "--catch-up",
        choices=["all", "latest", "none"],
        help="ticks missed while no worker took runs (a worker or server down): run them "
        "all (default, Prefect's behaviour), only the latest, or none",
    )
    add_parameter_options(
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
        help="every run reuses a completed run with the same cache key",
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
    # the local server's worker: the file server's socket, bound by its starter
    serve.add_argument("--files-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument(
        "--isolation",
        choices=["in-process", "process"],
        default="in-process",
        help="run notebook flow runs inside this process (fast; each notebook still has its "
        "own kernel) or each in a Python subprocess",
    )

    add_backfill_parser(commands)
    add_endpoints_parser(commands)
    add_alert_parser(commands)
    add_runs_parser(commands)

    server = commands.add_parser(
        "server",
        help="the local Prefect server and worker that run and record notebooks on this machine",
    )
    server.add_argument(
        "action",
        choices=["start", "stop", "status", "env"],
        help="env: the shell lines that point Prefect's own CLI and clients at the local server",
    )
    server.add_argument("--json", action="store_true", help="status as JSON")
    server.add_argument(
        "--database",
        choices=["postgresql", "sqlite"],
        help="start: the database of the server (default: postgresql, run by nbjobs under "
        "$NBJOBS_HOME; a home with a SQLite history keeps it until told otherwise); "
        "remembered for later starts",
    )
    server.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start: whether the API and UI ask for the credentials in "
        "$NBJOBS_HOME/server/credentials (default: they do). --no-auth lets every account "
        "of this machine use the server and run code as you; remembered for later starts",
    )
    return parser
