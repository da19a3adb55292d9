"""Following a Slurm job from the submitting machine, without Prefect.

What the job writes in its folder (``tasks/engine/layout.py``) is read back here: its
cell events as they come, its report once it ends, and the run's report from
Slurm's verdict and that report. Talking to Slurm itself is ``blocks/slurm.py``'s.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from notebook_jobs.blocks.slurm import JobStatus
from notebook_jobs.tasks.engine.execution import CellEvent
from notebook_jobs.tasks.engine.layout import REPORT_NAME
from notebook_jobs.tasks.models import CellReport, ErrorInfo, ExecutionReport, RunStatus

STDERR_TAIL_LINES = 30
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
                CellEvent(record["phase"], record["index"], record["done"], record["total"], report)
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


def status_from_report(job_id: str, report: ExecutionReport) -> JobStatus:
    """The job's state as its own report tells it, for when Slurm's accounting cannot.

    The job exits 0 when the notebook ran to its end and 1 otherwise, so this is
    what ``sacct`` would say, short of Slurm's own verdicts (TIMEOUT, CANCELLED...).
    """
    if report.success:
        return JobStatus(job_id, "COMPLETED", 0)
    return JobStatus(job_id, "CANCELLED" if report.status == "cancelled" else "FAILED", 1)


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
