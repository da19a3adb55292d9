"""``nbjobs serve``: register the deployments and run them on this machine."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from notebook_jobs.deployments.cli.common import duration
from notebook_jobs.deployments.exit_codes import EXIT_BAD_INPUT, EXIT_OK

WORKER_SETTINGS = {
    # Prefect's worker polls every 10 s by default; a notebook job should start at once.
    # Set before Prefect is imported: it reads its settings at import.
    "PREFECT_WORKER_QUERY_SECONDS": "0.5",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    # heartbeats let the server mark runs of a killed worker Crashed (see commands.py)
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}


def add_parser(commands: Any) -> None:
    """``nbjobs serve``'s arguments, and this module's ``handle`` as its handler."""
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
        "--keep-failed-kernel",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="keep the kernel of a run that failed in a cell alive this long (e.g. 10m), "
        "for `nbjobs repair` to go on in it (in-process only; default: not kept)",
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
    serve.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """A worker of the configured Prefect server's pool, in this process, until stopped."""
    import asyncio

    from notebook_jobs.deployments.local_state import configured_api_url

    if configured_api_url() is None:
        print(
            "nbjobs: serve runs a worker for a Prefect server: set PREFECT_API_URL to "
            "it. (Without one, the local server has its own worker: `nbjobs server status`.)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    for key, value in WORKER_SETTINGS.items():
        os.environ.setdefault(key, value)
    from pathlib import Path

    from notebook_jobs.blocks.settings import settings
    from notebook_jobs.deployments.commands import serve
    from notebook_jobs.tasks.runtime import Runtime, using_runtime

    socket = Path(args.local_socket) if args.local_socket else None
    kernel_pool = settings().kernel_pool if args.kernel_pool is None else args.kernel_pool
    files_url = None
    with contextlib.ExitStack() as files:
        if args.files_port is not None or args.files_fd is not None:
            import socket as sockets

            from notebook_jobs.deployments.file_server import serving_files

            bound = None if args.files_fd is None else sockets.socket(fileno=args.files_fd)
            try:
                files_url = files.enter_context(serving_files(args.files_port or 0, bound=bound))
            except OSError as error:
                print(
                    f"nbjobs: cannot serve files on 127.0.0.1:{args.files_port} "
                    f"({error.strerror}); choose another --files-port",
                    file=sys.stderr,
                )
                return EXIT_BAD_INPUT
        # the worker's runs link to its file server (a subprocess's through its
        # environment, deployments/worker.py:with_files_url)
        with using_runtime(Runtime(files_url=files_url, shared_tls=True)):
            asyncio.run(
                serve(
                    args.pool,
                    args.limit,
                    args.isolation,
                    socket,
                    kernel_pool,
                    args.adhoc,
                    args.keep_failed_kernel,
                )
            )
    return EXIT_OK
