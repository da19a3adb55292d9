"""``SlurmExecutor``: the execute step of a run as a Slurm job running the same engine.

The other executor of ``tasks/executors.py`` (where the ``Executor`` protocol and the
``LocalExecutor`` are): it writes the job's folder, submits a batch script that runs
``notebook_jobs.tasks.engine.slurm.job`` on a node, follows the job to its end and
collects what it left. How Slurm is spoken to is ``tasks/engine/slurm/``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import nbformat

from notebook_jobs.blocks.slurm import SlurmCluster, kernel_memory_limit
from notebook_jobs.tasks.engine.cells import EventCallback
from notebook_jobs.tasks.engine.layout import (
    BATCH_SCRIPT_NAME,
    EVENTS_NAME,
    SECRETS_NAME,
    STAGED_NAME,
    run_folder,
)
from notebook_jobs.tasks.engine.secrets import RunSecrets
from notebook_jobs.tasks.engine.slurm.commands import RETRYABLE_STATES, JobStatus, SlurmCommands
from notebook_jobs.tasks.engine.slurm.job import write_job_spec
from notebook_jobs.tasks.engine.slurm.script import render_batch_script
from notebook_jobs.tasks.engine.slurm.watch import cancel_job, collect_job, follow_job
from notebook_jobs.tasks.engine.staged import StagedNotebook
from notebook_jobs.tasks.executors import StatusCallback
from notebook_jobs.tasks.models import ExecutionOutcome


def write_secrets(path: Path, secrets: RunSecrets) -> None:
    """Write a job's secret parameters, readable by this user only (0600 before writing)."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(secrets.to_json())


class SlurmExecutor:
    """Runs the execute step as a Slurm job; owns the ``SlurmCommands`` it uses.

    The job runs ``notebook_jobs.tasks.engine.slurm.job`` on a node: the same engine
    as a local run. Resubmits after NODE_FAIL or PREEMPTED (up to
    ``cluster.node_failure_retries``); cancels the job (``scancel``) only when the run
    is cancelled, then waits for the job to write its partial notebook.

    Example:
        >>> executor = SlurmExecutor(SlurmCluster.load("hpc"))
        >>> outcome = await executor.execute(staged)
        >>> outcome.slurm.state
        'COMPLETED'
    """

    checks_kernel_here = False

    def __init__(self, cluster: SlurmCluster, commands: SlurmCommands | None = None) -> None:
        self.cluster = cluster
        self.commands = commands or SlurmCommands()

    def __repr__(self) -> str:
        return f"SlurmExecutor(work_dir={self.cluster.work_dir!r})"

    def run_folder(self, run_key: str) -> Path:
        # the job's folder must be on the filesystem the nodes share
        return run_folder(run_key, self.cluster.work_dir)

    def starting(self, staged: StagedNotebook) -> str:
        return "submitting"

    def _prepare(
        self, staged: StagedNotebook, cell_timeout: float | None, timeout: float | None
    ) -> Path:
        job_dir = staged.run_dir
        nbformat.write(staged.notebook, job_dir / STAGED_NAME)
        write_job_spec(
            job_dir,
            kernel=staged.kernel,
            cell_origin=staged.cell_origin,
            selected=staged.selected,
            cell_timeout_seconds=cell_timeout,
            timeout_seconds=timeout,
            memory_limit_bytes=staged.memory_limit_bytes or kernel_memory_limit(self.cluster),
            re_executed_before=staged.repair_from_cell,
        )
        script = job_dir / BATCH_SCRIPT_NAME
        script.write_text(
            render_batch_script(
                self.cluster, job_dir=str(job_dir), job_name=f"nbjobs-{staged.name}"
            )
        )
        return script

    async def execute(
        self,
        staged: StagedNotebook,
        *,
        cell_timeout_seconds: float | None = None,
        timeout_seconds: float | None = None,
        on_event: EventCallback | None = None,
        on_status: StatusCallback | None = None,
        log: Any = None,
    ) -> ExecutionOutcome:
        logger = log or logging.getLogger("nbjobs.slurm")
        status_to = on_status or (lambda text: None)
        job_dir = staged.run_dir
        script = await asyncio.to_thread(
            self._prepare, staged, cell_timeout_seconds, timeout_seconds
        )
        try:
            status, attempts = await self._follow(staged, script, on_event, status_to, logger)
        finally:  # a job that never started leaves it: gone whatever happened
            (job_dir / SECRETS_NAME).unlink(missing_ok=True)
        outcome = await asyncio.shield(
            asyncio.to_thread(
                collect_job,
                staged.run_dir,
                staged.kernel,
                status,
                attempts,
                logger,
                staged.secrets,
            )
        )
        if staged.repair_of is not None:  # no kernel outlives its job: a repair is cold
            outcome.report.repair_mode = "cold"
        return outcome

    async def _follow(
        self,
        staged: StagedNotebook,
        script: Path,
        on_event: EventCallback | None,
        status_to: StatusCallback,
        logger: Any,
    ) -> tuple[JobStatus, int]:
        """Submit the job (again after a node failure) and follow it to its end."""
        job_dir = staged.run_dir
        attempts = 0
        while True:
            attempts += 1
            (job_dir / EVENTS_NAME).unlink(missing_ok=True)
            if staged.secrets is not None:  # each attempt's job reads it once and deletes it
                await asyncio.to_thread(write_secrets, job_dir / SECRETS_NAME, staged.secrets)
            job_id = await asyncio.to_thread(self.commands.submit, str(script))
            status_to(f"Slurm job {job_id} submitted (attempt {attempts})")
            try:
                status = await follow_job(
                    self.commands, self.cluster, job_id, job_dir, on_event, status_to, logger
                )
            except asyncio.CancelledError:
                # The run is cancelled (and only then is the job): the job writes its
                # partial notebook on SIGTERM, and is collected like any other.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    task.uncancel()
                status = await asyncio.shield(
                    cancel_job(self.commands, self.cluster, job_id, job_dir, logger)
                )
                break
            if status.state in RETRYABLE_STATES and attempts <= self.cluster.node_failure_retries:
                logger.warning("Slurm job %s ended %s; resubmitting", job_id, status.state)
                continue
            break
        return status, attempts
