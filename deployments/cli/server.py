"""``nbjobs server``: start, stop and describe the local server."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    """``nbjobs server``'s arguments, and this module's ``handle`` as its handler."""
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
    server.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """``light_commands.server_command``: no Prefect imported."""
    from notebook_jobs.deployments.light_commands import server_command

    return server_command(args)
