"""``nbjobs retry-uploads``: upload what runs spilled while their store was down."""

from __future__ import annotations

import argparse
from typing import Any

from notebook_jobs.deployments.exit_codes import EXIT_OK, EXIT_STORE_FAILED


def add_parser(commands: Any) -> None:
    """``nbjobs retry-uploads``'s arguments, and this module's ``handle`` as its handler."""
    retry = commands.add_parser(
        "retry-uploads",
        help="upload the artefacts of runs whose store was unreachable ($NBJOBS_HOME/spill)",
    )
    retry.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Upload each spilled run; exit 3 if any is still spilled."""
    from notebook_jobs.tasks.store.spill import retry_spilled_uploads

    outcomes = retry_spilled_uploads()
    if not outcomes:
        print("nothing to upload")
    for folder, error in outcomes:
        print(f"{folder.name}: {'uploaded' if error is None else 'still spilled: ' + error}")
    return EXIT_STORE_FAILED if any(error for _, error in outcomes) else EXIT_OK
