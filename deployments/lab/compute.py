"""The dialog's compute types: our places to run, as labels and back.

``Local worker`` (the local server's) or ``Pool: notebook-jobs`` (a configured server's)
is the default pool; ``Pool: NAME`` another pool with a worker's ``adhoc-NAME``
deployment; ``Queue: NAME`` a queue of the default pool; ``Slurm: BLOCK`` a SlurmCluster
block (every run a Slurm job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jupyter_scheduler.exceptions import SchedulerError

from notebook_jobs.deployments.names import GENERAL_DEPLOYMENT, POOL_NAME

LOCAL_WORKER = "Local worker"
SLURM = "Slurm: "
POOL = "Pool: "
QUEUE = "Queue: "


@dataclass(frozen=True)
class Compute:
    """Where a run goes: a pool's ``adhoc`` deployment, a queue of it, a Slurm cluster."""

    pool: str = POOL_NAME
    queue: str | None = None
    cluster: str | None = None

    @property
    def deployment(self) -> str:
        """The pool's deployment for any notebook (``definitions.general_spec``)."""
        return GENERAL_DEPLOYMENT if self.pool == POOL_NAME else f"{GENERAL_DEPLOYMENT}-{self.pool}"


def compute_of(choice: str | None) -> Compute:
    """The place a compute type names (none: the default pool).

    Raises:
        SchedulerError: A choice this backend never offers, in one line.
    """
    if not choice or choice in (LOCAL_WORKER, POOL + POOL_NAME):
        return Compute()
    for prefix, field in ((SLURM, "cluster"), (POOL, "pool"), (QUEUE, "queue")):
        name = choice.removeprefix(prefix)
        if choice.startswith(prefix) and name:
            return Compute(**{field: name})
    raise SchedulerError(
        f"compute type {choice!r} is not one of notebook-jobs' ({LOCAL_WORKER}, "
        f"{POOL}NAME, {QUEUE}NAME, {SLURM}BLOCK)"
    )


def compute_label(run: dict[str, Any]) -> str | None:
    """The compute type of a flow run (or a deployment): None for the default pool."""
    parameters = run.get("parameters") or {}
    if parameters.get("cluster"):
        return SLURM + str(parameters["cluster"])
    pool = run.get("work_pool_name")
    if pool and pool != POOL_NAME:
        return POOL + str(pool)
    queue = run.get("work_queue_name")
    return None if queue in (None, "default") else QUEUE + str(queue)
