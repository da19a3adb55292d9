"""``nbjobs deploy``: a deployment for one notebook, typed by its parameters cell."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from notebook_jobs.blocks.exceptions import OptionError
from notebook_jobs.deployments.cli.common import (
    MEMORY_LIMIT_HELP,
    add_parameter_options,
    memory_size,
    request_parameters,
    use_local_server,
)
from notebook_jobs.deployments.exit_codes import EXIT_OK, EXIT_STORE_FAILED


def add_parser(commands: Any) -> None:
    """``nbjobs deploy``'s arguments, and this module's ``handle`` as its handler."""
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
    deploy.add_argument("--memory-limit", type=memory_size, metavar="SIZE", help=MEMORY_LIMIT_HELP)
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
    deploy.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Store the notebook, make or update its deployment, say how to run it."""
    import asyncio

    args.parameter_values = request_parameters(args)
    args.api_was_set = use_local_server() is None
    return asyncio.run(_deploy(args))


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
            "memory_limit": args.memory_limit,
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
