"""The execute step as a Slurm job: submit, wait (with progress), cancel, collect.

The job runs ``notebook_jobs.tasks.engine.slurm_job`` on the node, the same execution code
as a local run; everything before (staging) and after (HTML, upload, artifacts) is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
from prefect import get_run_logger, task
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from notebook_jobs.blocks.slurm import (
    RETRYABLE_STATES,
    JobStatus,
    SlurmCluster,
    SlurmCommands,
    render_batch_script,
)
from notebook_jobs.tasks.engine.slurm_job import (
    EVENTS,
    EXECUTED_NOTEBOOK,
    REPORT,
    STAGED_NOTEBOOK,
    write_job_spec,
)
from notebook_jobs.tasks.models import ErrorInfo, ExecutionReport, RunStatus, SlurmInfo
from notebook_jobs.tasks.notebook import StagedNotebook, artifact_key

STDERR_TAIL_LINES = 30
BATCH_SCRIPT = "job.sbatch"


class SlurmOutcome(BaseModel):
    """The execute step's report and the job's facts."""

    report: ExecutionReport
    info: SlurmInfo
    files: dict[str, str]  # artefact name -> local path (stdout, stderr, job zip)


def tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file, or '' if it does not exist."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def outcome_report(
    status: JobStatus, report: ExecutionReport | None, *, kernel: str, stderr_tail: str
) -> ExecutionReport:
    """The run's report from the job's final state and what the job wrote.

    A notebook that ran (COMPLETED, or FAILED because a cell raised) keeps its own
    report. Anything else Slurm ended (TIMEOUT, OUT_OF_MEMORY, CANCELLED, NODE_FAIL,
    a job that died before writing its report) becomes an error naming the job.
    """
    if status.state == "COMPLETED" and report is not None:
        return report
    if status.state == "FAILED" and report is not None and report.status == "failed":
        return report  # the notebook's own exception
    index = None
    if report is not None and report.error is not None:
        index = report.error.cell_index
    statuses: dict[str, RunStatus] = {"TIMEOUT": "timed_out", "CANCELLED": "cancelled"}
    run_status = statuses.get(status.state, "failed")
    where = f" while running cell {index}" if index is not None else ""
    message = (
        f"Slurm job {status.job_id} ended {status.state} (exit code {status.exit_code}){where}"
    )
    if status.state == "FAILED" and report is None and stderr_tail:
        message += ": " + stderr_tail.strip().splitlines()[-1]
    error = ErrorInfo(
        name="SlurmJobError", message=message, cell_index=index, traceback=stderr_tail
    )
    if report is None:
        stamp = datetime.now(timezone.utc)
        return ExecutionReport(
            status=run_status, error=error, kernel=kernel, started_at=stamp, finished_at=stamp
        )
    return report.model_copy(update={"status": run_status, "error": error})


async def wait_for_job(
    commands: SlurmCommands,
    job_id: str,
    cluster: SlurmCluster,
    on_change: Any,
    on_poll: Any,
) -> JobStatus:
    """Poll the job's state with backoff until it ends; call back on changes."""
    interval = cluster.poll_interval_seconds
    last: str | None = None
    missing_polls = 0
    while True:
        status = await asyncio.to_thread(commands.status, job_id)
        await on_poll()
        if status is None:
            missing_polls += 1
            if missing_polls > 30:
                return JobStatus(job_id, "UNKNOWN")
        else:
            if status.state != last:
                last = status.state
                await on_change(status)
                interval = cluster.poll_interval_seconds  # state changed: look again soon
            if status.finished:
                return status
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, cluster.max_poll_interval_seconds)


@task(name="execute-on-slurm", cache_policy=NO_CACHE)
async def execute_notebook_on_slurm(
    staged: StagedNotebook,
    cluster: SlurmCluster,
    cell_timeout_seconds: float | None = None,
    timeout_seconds: float | None = None,
    commands: SlurmCommands | None = None,
) -> SlurmOutcome:
    """Run the execute step as a Slurm job in ``staged.run_dir`` (on the shared folder).

    Shows the job id and state in a progress artifact and the log while the job is
    pending or running, and the cells as they finish. Resubmits after NODE_FAIL or
    PREEMPTED (up to ``cluster.node_failure_retries``). Cancelling the flow run (or
    its timeout) cancels the job with ``scancel``.

    Example:
        >>> outcome = await execute_notebook_on_slurm(staged, SlurmCluster.load("hpc"))
        >>> outcome.info.state
        'COMPLETED'
    """
    logger = get_run_logger()
    job_dir = staged.run_dir
    nbformat.write(staged.notebook, job_dir / STAGED_NOTEBOOK)
    write_job_spec(
        job_dir,
        kernel=staged.kernel,
        cell_origin=staged.cell_origin,
        selected=staged.selected,
        cell_timeout_seconds=cell_timeout_seconds,
        timeout_seconds=timeout_seconds,
    )
    script = job_dir / BATCH_SCRIPT
    script.write_text(
        render_batch_script(cluster, job_dir=str(job_dir), job_name=f"nbjobs-{staged.name}")
    )
    commands = commands or SlurmCommands()
    progress_id = await acreate_progress_artifact(
        0.0, key=artifact_key(staged.name, "progress"), description=f"{staged.name}: submitting"
    )
    attempts = 0
    while True:
        attempts += 1
        (job_dir / EVENTS).unlink(missing_ok=True)
        job_id = await asyncio.to_thread(commands.submit, str(script))
        logger.info("submitted Slurm job %s (attempt %d)", job_id, attempts)
        seen_events = 0

        async def on_change(status: JobStatus, job_id: str = job_id) -> None:
            where = f" on {status.node}" if status.node else ""
            logger.info("Slurm job %s %s%s", job_id, status.state, where)
            await aupdate_progress_artifact(
                progress_id, 0.0, description=f"{staged.name}: Slurm job {job_id} {status.state}"
            )

        async def on_poll(job_id: str = job_id) -> None:
            nonlocal seen_events
            path = job_dir / EVENTS
            if not path.exists():
                return
            lines = path.read_text().splitlines()
            for line in lines[seen_events:]:
                event = json.loads(line)
                if event["phase"] != "end":
                    continue
                logger.info(
                    "cell %d (%d/%d) %s in %.3f s",
                    event["index"],
                    event["done"],
                    event["total"],
                    event["status"],
                    event["duration_seconds"] or 0.0,
                )
                await aupdate_progress_artifact(
                    progress_id,
                    100.0 * event["done"] / max(event["total"], 1),
                    description=f"{staged.name}: Slurm job {job_id}, cell {event['index']} done",
                )
            seen_events = len(lines)

        try:
            status = await wait_for_job(commands, job_id, cluster, on_change, on_poll)
        except BaseException:
            # a cancelled flow run, its timeout, or SIGTERM: leave nothing running
            await asyncio.to_thread(commands.cancel, job_id)
            logger.warning("cancelled Slurm job %s", job_id)
            raise
        if status.state in RETRYABLE_STATES and attempts <= cluster.node_failure_retries:
            logger.warning("Slurm job %s ended %s; resubmitting", job_id, status.state)
            continue
        break

    stdout, stderr = job_dir / f"slurm-{job_id}.out", job_dir / f"slurm-{job_id}.err"
    stderr_tail = tail(stderr)
    report_path = job_dir / REPORT
    written = (
        ExecutionReport.model_validate_json(report_path.read_text())
        if report_path.exists()
        else None
    )
    report = outcome_report(status, written, kernel=staged.kernel, stderr_tail=stderr_tail)
    archive = shutil.make_archive(str(job_dir.parent / f"job-{job_id}"), "zip", job_dir)
    files = {"slurm/job.zip": archive}
    for path in (stdout, stderr):
        if path.exists():
            files[f"slurm/{path.name}"] = str(path)
    if not (job_dir / EXECUTED_NOTEBOOK).exists():
        logger.warning("the job wrote no notebook; storing the staged one")
        shutil.copy(job_dir / STAGED_NOTEBOOK, job_dir / EXECUTED_NOTEBOOK)
    info = SlurmInfo(
        job_id=job_id,
        state=status.state,
        exit_code=status.exit_code,
        node=status.node,
        attempts=attempts,
        stdout=tail(stdout, 50),
        stderr_tail=stderr_tail,
    )
    await aupdate_progress_artifact(
        progress_id,
        100.0 if report.success else 0.0,
        description=f"{staged.name}: Slurm job {job_id} {status.state}",
    )
    return SlurmOutcome(report=report, info=info, files=files)
