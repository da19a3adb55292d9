"""The ``nbjobs`` argument parser: each command module adds its own subcommand.

Nothing is run here, and nothing heavy imported: every command module imports Prefect,
papermill or nbformat inside its handler, when it runs.
"""

from __future__ import annotations

import argparse

from notebook_jobs.deployments import alerts, backfill, endpoints, runs_command
from notebook_jobs.deployments.cli import (
    deploy,
    diff,
    inspect,
    lab,
    repair,
    retry_uploads,
    run,
    serve,
    server,
)
from notebook_jobs.deployments.cli.common import version

# in the order `nbjobs --help` lists them
COMMANDS = [run, repair, inspect, deploy, diff, retry_uploads, serve, backfill, endpoints]
COMMANDS += [alerts, lab]
COMMANDS += [runs_command, server]


def build_parser() -> argparse.ArgumentParser:
    """The ``nbjobs`` argument parser; each subcommand's ``handler`` runs it."""
    parser = argparse.ArgumentParser(
        prog="nbjobs", description="Run Jupyter notebooks as Prefect flows."
    )
    parser.add_argument("--version", action="version", version=version())
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser
