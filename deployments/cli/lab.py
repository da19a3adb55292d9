"""``nbjobs lab``: JupyterLab, its Notebook Jobs on notebook-jobs and the local server."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from notebook_jobs.deployments.exit_codes import EXIT_BAD_INPUT

NEEDED = ("jupyterlab", "jupyter_scheduler")


def add_parser(commands: Any) -> None:
    """``nbjobs lab``'s arguments, and this module's ``handle`` as its handler."""
    lab = commands.add_parser(
        "lab",
        help="start JupyterLab with its Create Notebook Job dialog and Notebook Jobs panel on "
        "notebook-jobs (the local server, started if need be, or PREFECT_API_URL's)",
        epilog="Any other argument goes to jupyter lab as it is: nbjobs lab --port 8890 "
        "--no-browser",
    )
    lab.set_defaults(handler=handle, passes_on="jupyter_args", jupyter_args=[])


def handle(args: argparse.Namespace) -> int:
    """Start the local server first (the dialog's first job then starts at once), then
    become ``jupyter lab``: Ctrl-C stops it as it stops any JupyterLab."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"nbjobs: nbjobs lab needs {', '.join(missing)}: "
            "pip install 'notebook-jobs[jupyterlab]'",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    from notebook_jobs.deployments.light_commands import announce
    from notebook_jobs.deployments.local_server import LocalServer
    from notebook_jobs.deployments.local_state import configured_api_url

    configured = configured_api_url()
    if configured is None:
        server = LocalServer()
        server.ensure(announce=announce)
        print(
            f"nbjobs: Notebook Jobs run on the local server at {server.ui_url()}", file=sys.stderr
        )
    else:
        print(f"nbjobs: Notebook Jobs run on the Prefect server at {configured}", file=sys.stderr)
    # jupyter lab as this interpreter's module: its script may be elsewhere (--user)
    command = [sys.executable, "-m", "jupyterlab", *args.jupyter_args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # not reached: this process is jupyter lab now
