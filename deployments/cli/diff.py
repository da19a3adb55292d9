"""``nbjobs diff``: what changed between two runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from notebook_jobs.blocks.exceptions import NotebookInputError
from notebook_jobs.deployments.cli.common import use_local_server
from notebook_jobs.deployments.exit_codes import EXIT_BAD_INPUT, EXIT_OK


def add_parser(commands: Any) -> None:
    """``nbjobs diff``'s arguments, and this module's ``handle`` as its handler."""
    diff = commands.add_parser(
        "diff", help="what changed between two runs: parameters, outputs, cells, text, files"
    )
    diff.add_argument("run_a", help="a flow run id, or the path or URI of a result.json")
    diff.add_argument("run_b", help="the run to compare with, the same way")
    diff.add_argument("--json", action="store_true", help="print the comparison as JSON")
    diff.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Compare the two runs; print Markdown, or JSON with ``--json``."""
    import asyncio

    return asyncio.run(_diff(args))


async def _diff(args: argparse.Namespace) -> int:
    import json

    from notebook_jobs.tasks.engine.compare import comparison_markdown

    if any(not ref.endswith(".json") for ref in (args.run_a, args.run_b)):
        use_local_server()  # run ids are looked up on the server
    from notebook_jobs.flows.run_diff import compare

    try:
        found = await compare(args.run_a, args.run_b)
    except NotebookInputError as error:
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(found, indent=2, default=str) if args.json else comparison_markdown(found))
    return EXIT_OK
