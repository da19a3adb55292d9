"""``nbjobs inspect``: a notebook's parameters, read without Prefect or papermill."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    """``nbjobs inspect``'s arguments, and this module's ``handle`` as its handler."""
    inspect = commands.add_parser("inspect", help="list a notebook's parameters")
    inspect.add_argument("notebook", help="path, s3:// URI or http(s):// URL of the notebook")
    inspect.add_argument("--json", action="store_true", help="print the parameters as JSON")
    inspect.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """List the parameters (``light_commands.inspect_command``)."""
    from notebook_jobs.deployments.light_commands import inspect_command

    return inspect_command(args)
