"""``nbjobs repair RUN``: a failed run, continued from its failing cell in a new run.

A ``run-notebook`` run with ``repair_of`` (``flows/repair.py``), run as ``nbjobs run``
runs one: on the local server's worker, or in this process against a server of your
own. It takes the failed run's notebook, parameters and options; ``--notebook`` gives a
fixed notebook, ``-p`` changes parameters, ``--from-cell`` another cell to go on from.
"""

from __future__ import annotations

import argparse
from typing import Any

from notebook_jobs.deployments.cli.common import (
    add_parameter_options,
    request_parameters,
    use_local_server,
)


def add_parser(commands: Any) -> None:
    """``nbjobs repair``'s arguments, and this module's ``handle`` as its handler."""
    repair = commands.add_parser(
        "repair",
        help="continue a failed run from its failing cell, in a new run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    repair.add_argument("run", metavar="RUN", help="the failed run's flow run id")
    repair.add_argument(
        "--from-cell",
        type=int,
        metavar="N",
        help="the cell to go on from (default: the one that failed)",
    )
    repair.add_argument(
        "--notebook",
        metavar="FIXED",
        help="a fixed notebook to go on with (default: the one the failed run ran)",
    )
    add_parameter_options(
        repair,
        "a parameter to change (read as papermill reads -p)",
        "a parameter to change, kept as a string",
    )
    repair.add_argument(
        "--json", action="store_true", help="print result.json on stdout, nothing else"
    )
    repair.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the run's log on stderr as it runs: each cell and its output",
    )
    # what `nbjobs run`'s reporting reads, without its papermill options
    repair.set_defaults(
        handler=handle,
        output=None,
        stdout_file=None,
        stderr_file=None,
        progress_bar=None,
        log_level=None,
    )


def repair_request(args: argparse.Namespace, parameters: dict[str, Any]) -> dict[str, Any]:
    """The ``run-notebook`` arguments of the repair: the failed run's id, and what changes."""
    from notebook_jobs.deployments.client_run import local_notebook, parameter_order

    request: dict[str, Any] = {"repair_of": args.run, "parameters": parameters}
    if args.from_cell is not None:
        request["from_cell"] = args.from_cell
    if args.notebook:
        request["notebook"] = local_notebook(args.notebook)
    order = parameter_order(parameters)
    if order:
        request["parameter_order"] = order
    return request


def handle(args: argparse.Namespace) -> int:
    """Run the repair on the local server's worker, or in this process against the
    configured server, and report it as ``nbjobs run`` reports a run."""
    from notebook_jobs.blocks.exceptions import NotebookInputError
    from notebook_jobs.deployments.report import report_refusal

    try:
        request = repair_request(args, request_parameters(args))
    except NotebookInputError as error:
        return report_refusal(type(error).__name__, str(error), args.json)
    server = use_local_server()
    if server is not None:
        from notebook_jobs.deployments.client_run import run_on_local_server

        return run_on_local_server(args, request["parameters"], server, request=request)
    import asyncio

    from notebook_jobs.deployments.cli.run import run_here

    return asyncio.run(run_here(args, request))
