"""Following a Slurm job from the submitting machine, without Prefect.

``follow_job`` polls a submitted job until it ends, and reads back what it writes in
its folder (``tasks/engine/layout.py``): its cell events as they come, its report once
it ends. ``cancel_job`` cancels it (only ever for a cancelled run); ``collect_job``
makes the run's outcome from Slurm's verdict and what the job left. The commands
themselves (sbatch, sacct, squeue, scontrol, scancel) are ``commands.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat

from notebook_jobs.blocks.exceptions import SlurmSubmissionError
from notebook_jobs.tasks.engine.cells import CellEvent, EventCallback, clear_outputs
from notebook_jobs.tasks.engine.layout import (
    EVENTS_NAME,
    EXECUTED_NAME,
    REPORT_NAME,
    SECRETS_NAME,
    STAGED_NAME,
)
from notebook_jobs.tasks.engine.secrets import RunSecrets
from notebook_jobs.tasks.engine.slurm.commands import JobStatus, SlurmCommands
from notebook_jobs.tasks.models import (
    CellReport,
    ErrorInfo,
    ExecutionOutcome,
    ExecutionReport,
    RunStatus,
    SlurmInfo,
)

if TYPE_CHECKING:  # a Prefect block: the job on the node imports no Prefect
    from notebook_jobs.blocks.slurm import SlurmCluster  # noqa: TID251 (typing only)

STDERR_TAIL_LINES = 30
# A job no command knows (sacct, squeue, scontrol) and that left no report of its own
# is given up on after this many polls (with backoff, several minutes).
UNKNOWN_JOB_POLLS = 30
# sacct and squeue fail now and then on a busy controller; this many in a row end the run
STATUS_FAILURES_TOLERATED = 5
# After scancel, how long the job may take to write its partial notebook and end.
CANCEL_WAIT_SECONDS = 60.0
# Slurm's accounting may say TIMEOUT or CANCELLED a moment before the job has written
# its report on SIGTERM; an ended job's report is waited for this long.
REPORT_WAIT_SECONDS = 10.0
log = logging.getLogger("nbjobs.slurm")


def tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file, or '' if it does not exist."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def read_events(path: Path, offset: int) -> tuple[list[CellEvent], int]:
    """The cell events a job appended to ``events.jsonl`` since byte ``offset``.

    Only whole lines are read: a line the job is still writing waits for the next
    call. A line that is not a valid event is logged and skipped, never fatal.

    Returns:
        The events, and the offset to read from next time.
    """
    try:
        with path.open("rb") as stream:
            stream.seek(offset)
            data = stream.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events: list[CellEvent] = []
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
            report = None
            if record["phase"] == "end":
                report = CellReport(
                    index=record["index"],
                    status=record["status"],
                    duration_seconds=record.get("duration_seconds"),
                )
            events.append(
                CellEvent(
                    record["phase"],
                    record["index"],
                    record["done"],
                    record["total"],
                    report,
                    stdout=record.get("stdout") or "",
                    stderr=record.get("stderr") or "",
                )
            )
        except (ValueError, KeyError, TypeError) as error:
            log.warning("skipped an unreadable line of %s: %s", path, error)
    return events, offset + end


def job_report(job_dir: Path) -> ExecutionReport | None:
    """The report the job wrote when it ended, or None (not yet, or unreadable)."""
    path = job_dir / REPORT_NAME
    try:
        return ExecutionReport.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as error:
        log.warning("the job's report %s is unreadable: %s", path, error)
        return None


def running_cell(job_dir: Path) -> int | None:
    """The cell the job had started and not ended, from its events; None if none."""
    events, _ = read_events(job_dir / EVENTS_NAME, 0)
    started: int | None = None
    for event in events:
        if event.phase == "start":
            started = event.index
        elif event.index == started:
            started = None
    return started


def wait_for_report(job_dir: Path, seconds: float = REPORT_WAIT_SECONDS) -> ExecutionReport | None:
    """The ended job's report, waited for up to ``seconds`` (blocking: a thread).

    A job Slurm ends sends SIGTERM to the job, which then writes its partial notebook
    and report; accounting can show the verdict before that write lands. A job killed
    outright (SIGKILL, a lost node) writes none: then None, after ``seconds``.
    """
    deadline = time.monotonic() + seconds
    while (report := job_report(job_dir)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return report


def status_from_report(job_id: str, report: ExecutionReport) -> JobStatus:
    """The job's state as its own report tells it, for when Slurm's accounting cannot.

    The job exits 0 when the notebook ran to its end and 1 otherwise, so this is
    what ``sacct`` would say, short of Slurm's own verdicts (TIMEOUT, CANCELLED...).
    """
    if report.success:
        return JobStatus(job_id, "COMPLETED", 0)
    return JobStatus(job_id, "CANCELLED" if report.status == "cancelled" else "FAILED", 1)


def outcome_report(
    status: JobStatus,
    report: ExecutionReport | None,
    *,
    kernel: str,
    stderr_tail: str,
    running: int | None = None,
) -> ExecutionReport:
    """The run's report from the job's final state and what the job wrote.

    A notebook that ran (COMPLETED, or FAILED because a cell raised) keeps its own
    report. Anything else Slurm ended (TIMEOUT, OUT_OF_MEMORY, CANCELLED, NODE_FAIL,
    a job that died before writing its report) becomes an error naming the job, and
    the cell it was running: the report's, or else ``running`` (from its events).
    """
    if status.state == "COMPLETED" and report is not None:
        return report
    if status.state == "FAILED" and report is not None and report.status == "failed":
        return report  # the notebook's own exception
    index = running
    if report is not None and report.error is not None and report.error.cell_index is not None:
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


async def follow_job(
    commands: SlurmCommands,
    cluster: SlurmCluster,
    job_id: str,
    job_dir: Path,
    on_event: EventCallback | None,
    on_status: Callable[[str], None],
    logger: Any,
) -> JobStatus:
    """Poll the job with backoff until it ends, forwarding its cell events.

    A failing status command is tolerated ``STATUS_FAILURES_TOLERATED`` times in a
    row; a job no command knows is judged by its own report, if it wrote one. Nothing
    here cancels the job: only a cancelled run does (``cancel_job``).

    Raises:
        SlurmSubmissionError: The job's state could not be read, too many times in
            a row (the job is left to Slurm: it may still be running).
    """
    interval = cluster.poll_interval_seconds
    last: str | None = None
    unknown = failures = 0
    offset = 0
    while True:
        status: JobStatus | None = None
        try:
            status = await asyncio.to_thread(commands.status, job_id)
            failures = 0
        except SlurmSubmissionError as error:
            failures += 1
            if failures > STATUS_FAILURES_TOLERATED:
                raise SlurmSubmissionError(
                    f"the state of Slurm job {job_id} could not be read {failures} times "
                    f"in a row ({error}); the job was left to Slurm"
                ) from error
            logger.warning("could not read the state of Slurm job %s: %s", job_id, error)
        events, offset = await asyncio.to_thread(read_events, job_dir / EVENTS_NAME, offset)
        for event in events:
            await _emit(on_event, event, logger)
        if status is None and failures == 0:
            unknown += 1
            written = await asyncio.to_thread(job_report, job_dir)
            if written is not None:
                return status_from_report(job_id, written)
            if unknown > UNKNOWN_JOB_POLLS:
                return JobStatus(job_id, "UNKNOWN")
        if status is not None:
            unknown = 0
            if status.state != last:
                last = status.state
                where = f" on {status.node}" if status.node else ""
                on_status(f"Slurm job {job_id} {status.state}{where}")
                interval = cluster.poll_interval_seconds  # it changed: look again soon
            if status.finished:
                return status
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, cluster.max_poll_interval_seconds)


async def cancel_job(
    commands: SlurmCommands, cluster: SlurmCluster, job_id: str, job_dir: Path, logger: Any
) -> JobStatus:
    """``scancel`` the job and wait (up to ``CANCEL_WAIT_SECONDS``) until it has ended.

    The job writes its partial notebook and its report on SIGTERM.
    """
    await asyncio.to_thread(commands.cancel, job_id)
    logger.warning("cancelled Slurm job %s", job_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CANCEL_WAIT_SECONDS
    while loop.time() < deadline:
        status = None
        with contextlib.suppress(SlurmSubmissionError):
            status = await asyncio.to_thread(commands.status, job_id)
        if status is not None and status.finished:
            return status
        if status is None and (written := await asyncio.to_thread(job_report, job_dir)):
            return status_from_report(job_id, written)
        await asyncio.sleep(cluster.poll_interval_seconds)
    return JobStatus(job_id, "CANCELLED")


def collect_job(
    job_dir: Path,
    kernel: str,
    status: JobStatus,
    attempts: int,
    logger: Any,
    secrets: RunSecrets | None = None,
) -> ExecutionOutcome:
    """The run's outcome from what the ended job left in its folder (blocking: a thread).

    With secret parameters, the secrets file is removed (a job that never started
    left it) and every text file of the folder is masked before it is archived.
    """
    job_id = status.job_id
    stdout, stderr = job_dir / f"slurm-{job_id}.out", job_dir / f"slurm-{job_id}.err"
    # the last writes of a job that started (its events file) come before the masking
    if status.state != "COMPLETED" and (job_dir / EVENTS_NAME).exists():
        wait_for_report(job_dir)
    if secrets is not None:
        (job_dir / SECRETS_NAME).unlink(missing_ok=True)
        for path in job_dir.rglob("*"):
            if path.is_file() and not path.is_symlink():
                secrets.mask_file(path)
    stderr_tail = tail(stderr)
    report = outcome_report(
        status,
        job_report(job_dir),
        kernel=kernel,
        stderr_tail=stderr_tail,
        running=running_cell(job_dir),
    )
    if report.resources.peak_memory_bytes is None and status.max_rss_bytes:
        # the job ended before the engine measured (OUT_OF_MEMORY, a kill): Slurm's figure
        report.resources.peak_memory_bytes = status.max_rss_bytes
    if not (job_dir / EXECUTED_NAME).exists():
        logger.warning("the job wrote no notebook; storing the staged one, with no outputs")
        staged = nbformat.read(job_dir / STAGED_NAME, as_version=4)
        clear_outputs(staged)
        nbformat.write(staged, job_dir / EXECUTED_NAME)
    archive = shutil.make_archive(str(job_dir.parent / f"job-{job_id}"), "zip", job_dir)
    logs = {"slurm/job.zip": archive}
    for path in (stdout, stderr):
        if path.exists():
            logs[f"slurm/{path.name}"] = str(path)
    info = SlurmInfo(
        job_id=job_id,
        state=status.state,
        exit_code=status.exit_code,
        node=status.node,
        attempts=attempts,
        stdout=tail(stdout, 50),
        stderr_tail=stderr_tail,
        max_rss_bytes=status.max_rss_bytes,
    )
    return ExecutionOutcome(report=report, logs=logs, slurm=info)


async def _emit(callback: EventCallback | None, event: CellEvent, logger: Any) -> None:
    if callback is None:
        return
    try:
        outcome = callback(event)
        if outcome is not None:
            await outcome
    except Exception as error:  # progress reporting must never end a job
        logger.warning("could not report progress: %s", error)
