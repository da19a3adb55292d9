"""The commands that answer without Prefect: ``nbjobs inspect`` and ``nbjobs server``.

``inspect`` reads a local Python notebook's parameters cell with ``ast``; ``server``
starts, stops and describes the local server. Neither imports Prefect, papermill or
nbformat unless a notebook needs them (a URL, nbformat 3, another language).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from notebook_jobs.deployments.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_SERVER_FAILED

if TYPE_CHECKING:  # imported by the command itself, when it needs it
    from notebook_jobs.deployments.local_server import LocalServer


def announce(message: str) -> None:
    """One line on stderr about what the local server is doing."""
    print(f"nbjobs: {message}", file=sys.stderr, flush=True)


def server_command(args: argparse.Namespace) -> int:
    from notebook_jobs.deployments.local_server import LocalServer
    from notebook_jobs.deployments.local_state import configured_api_url

    server = LocalServer()
    if args.action == "stop":
        stopped = server.stop()
        print("stopped " + " and ".join(stopped) if stopped else "the local server was not running")
        return EXIT_OK
    if args.action == "env":
        return _print_env(server)
    if args.action == "start":
        configured = configured_api_url()
        if configured is not None:
            print(
                f"nbjobs: note: PREFECT_API_URL names {configured}; commands in this "
                "shell use that server, not the local one",
                file=sys.stderr,
            )
        server.ensure(announce=announce, database=args.database, auth=args.auth)
    status = server.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK if status["running"] or args.action == "status" else EXIT_SERVER_FAILED
    if not status["running"]:
        print(
            f"the local server is not running (start it: nbjobs server start)\n"
            f"  database   {status['database_kind']}, {status['database']}\n"
            f"  log        {status['server_log']}"
        )
        return EXIT_OK
    server_uptime = duration(status["server_uptime_seconds"])
    login = (
        f"{status['login']} (the UI's login asks for it whole; Prefect's CLI: "
        'eval "$(nbjobs server env)")'
        if status["login"]
        else f"unreadable: {status['credentials']} (`nbjobs server stop` and run again)"
        if status["auth"]
        else "none asked (--no-auth): every account of this machine can use it"
    )
    print(
        f"the local Prefect server is running at {status['url']}\n"
        f"  login      {login}\n"
        f"  server     pid {status['server_pid']}, up {server_uptime}\n"
        f"  worker     "
        + (
            f"pid {status['worker_pid']}, up {duration(status['worker_uptime_seconds'])}"
            if status["worker_pid"]
            else "not running (`nbjobs run` or `nbjobs server start` starts it)"
        )
        + (
            f"\n  files      {status['files_url']} (local-store links in the UI open here)"
            if status.get("files_url")
            else ""
        )
        + f"\n  database   {status['database_kind']}"
        + (f" (pid {status['postgres_pid']})" if status["postgres_pid"] else "")
        + f", {status['database']}\n"
        f"  logs       {status['server_log']}, {status['worker_log']}\n"
        f"  stop it:   nbjobs server stop"
    )
    return EXIT_OK


def _print_env(server: LocalServer) -> int:
    """``nbjobs server env``: ``eval "$(nbjobs server env)"`` points Prefect's CLI and
    clients at the running local server, with its credentials."""
    import shlex

    status = server.status()
    if not status["running"]:
        print(
            "nbjobs: the local server is not running (start it: nbjobs server start)",
            file=sys.stderr,
        )
        return EXIT_SERVER_FAILED
    print(f"export PREFECT_API_URL={shlex.quote(status['api_url'])}")
    auth_string = server.auth_string()
    if auth_string:
        print(f"export PREFECT_API_AUTH_STRING={shlex.quote(auth_string)}")
    return EXIT_OK


def duration(seconds: float | None) -> str:
    seconds = int(seconds or 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


def declared_parameters_light(notebook: str) -> list[dict[str, Any]] | None:
    """A local Python notebook's parameters, read without papermill or nbformat; None
    when the notebook is anything else (a URL, nbformat 3, another language)."""
    from pathlib import Path

    from notebook_jobs.tasks.engine.parameters import (
        notebook_language,
        parameters_cell_source,
        parse_parameters,
    )

    try:
        document = json.loads(Path(notebook).read_bytes())
    except (OSError, ValueError):
        return None  # the full path below says what is wrong
    if not isinstance(document, dict) or document.get("nbformat") != 4:
        return None
    if notebook_language(document) != "python":
        return None
    source = parameters_cell_source(document)
    return [] if source is None else parse_parameters(source)


def inspect_command(args: argparse.Namespace) -> int:
    parameters = None
    if not args.notebook.startswith(("s3://", "http://", "https://")):
        parameters = declared_parameters_light(args.notebook)
    if parameters is None:
        from notebook_jobs.blocks.exceptions import NotebookInputError
        from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
        from notebook_jobs.tasks.engine.staging import declared_parameters

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
