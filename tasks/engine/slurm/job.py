"""The execute step as a Slurm job: ``python -m notebook_jobs.tasks.engine.slurm.job JOB_DIR``.

Runs on the compute node the same code a local run does (``execute_notebook_async``),
without Prefect. The job folder (``tasks/engine/layout.py``) holds, on the shared
filesystem:

    job.json          what to run (written by the flow): kernel, cells, timeouts
    staged.ipynb      the parameterised notebook
    work/             the notebook's working folder (input files staged here)
    events.jsonl      one line per cell event, read by the flow for progress
    notebook.ipynb    the executed notebook, checkpointed after every cell
    execution.json    the ExecutionReport, written at the end (also on SIGTERM)

The exit code is 0 when the notebook ran to its end and 1 when it did not, so
``sacct`` shows COMPLETED or FAILED; TIMEOUT and CANCELLED come from Slurm itself
(SIGTERM, handled: the partial notebook and the report are written first).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat

from notebook_jobs.blocks.exceptions import NotebookInputError, RunCancelledError
from notebook_jobs.tasks.engine.cells import CellEvent
from notebook_jobs.tasks.engine.execution import execute_notebook_async
from notebook_jobs.tasks.engine.layout import (
    EVENTS_NAME,
    EXECUTED_NAME,
    JOB_SPEC_NAME,
    REPORT_NAME,
    SECRETS_NAME,
    STAGED_NAME,
    WORK_FOLDER,
)
from notebook_jobs.tasks.engine.secrets import RunSecrets
from notebook_jobs.tasks.models import ErrorInfo, ExecutionOutcome, ExecutionReport


def write_job_spec(
    job_dir: Path,
    *,
    kernel: str,
    cell_origin: list[int | None],
    selected: set[int] | None,
    cell_timeout_seconds: float | None,
    timeout_seconds: float | None,
    memory_limit_bytes: int | None = None,
    re_executed_before: int | None = None,
) -> None:
    """Write ``job.json``: what the job runs, apart from the notebook itself."""
    spec: dict[str, Any] = {
        "kernel": kernel,
        "cell_origin": cell_origin,
        "selected": sorted(selected) if selected is not None else None,
        "cell_timeout_seconds": cell_timeout_seconds,
        "timeout_seconds": timeout_seconds,
        "memory_limit_bytes": memory_limit_bytes,
        "re_executed_before": re_executed_before,
    }
    (job_dir / JOB_SPEC_NAME).write_text(json.dumps(spec, indent=2))


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(path.suffix + ".part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


async def run_job(job_dir: Path) -> int:
    """Execute the job folder's notebook; return the process exit code."""
    spec = json.loads((job_dir / JOB_SPEC_NAME).read_text())
    notebook = nbformat.read(job_dir / STAGED_NAME, as_version=4)
    secrets_file = job_dir / SECRETS_NAME
    secrets = None
    if secrets_file.exists():  # read once, then gone from the shared filesystem
        secrets = RunSecrets.from_json(secrets_file.read_text())
        secrets_file.unlink()
    events = (job_dir / EVENTS_NAME).open("a", encoding="utf-8")

    def on_event(event: CellEvent) -> None:
        record = {
            "phase": event.phase,
            "index": event.index,
            "done": event.done,
            "total": event.total,
            "status": event.report.status if event.report else None,
            "duration_seconds": event.report.duration_seconds if event.report else None,
            "peak_memory_bytes": event.report.peak_memory_bytes if event.report else None,
            "cpu_seconds": event.report.cpu_seconds if event.report else None,
            "stdout": event.stdout,
            "stderr": event.stderr,
        }
        events.write(json.dumps(record) + "\n")
        events.flush()
        if event.phase == "end":  # a checkpoint survives even SIGKILL
            _write_atomically(job_dir / EXECUTED_NAME, nbformat.writes(notebook))

    execution = asyncio.ensure_future(
        execute_notebook_async(
            notebook,
            spec["cell_origin"],
            kernel=spec["kernel"],
            workdir=job_dir / WORK_FOLDER,
            selected=set(spec["selected"]) if spec["selected"] is not None else None,
            cell_timeout_seconds=spec["cell_timeout_seconds"],
            timeout_seconds=spec["timeout_seconds"],
            on_event=on_event,
            secrets=secrets,
            memory_limit_bytes=spec.get("memory_limit_bytes"),
            re_executed_before=spec.get("re_executed_before"),
        )
    )
    loop = asyncio.get_running_loop()
    # Slurm sends SIGTERM at its time limit and on scancel, SIGKILL KillWait later.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, execution.cancel)
    try:
        report = await execution
    except RunCancelledError as cancelled:
        report = ExecutionOutcome.model_validate(cancelled.execution).report
    except NotebookInputError as error:  # e.g. the kernel is not installed on this node
        now = datetime.now(timezone.utc)
        report = ExecutionReport(
            status="failed",
            error=ErrorInfo(name=type(error).__name__, message=str(error)),
            kernel=spec["kernel"],
            started_at=now,
            finished_at=now,
        )
    finally:
        events.close()
    _write_atomically(job_dir / EXECUTED_NAME, nbformat.writes(notebook))
    _write_atomically(job_dir / REPORT_NAME, report.model_dump_json(indent=2))
    return 0 if report.success else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m notebook_jobs.tasks.engine.slurm.job JOB_DIR``.

    One kernel per job, spawned: no fork servers are current here (a fork server
    would cost more than it saves).
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m notebook_jobs.tasks.engine.slurm.job JOB_DIR", file=sys.stderr)
        return 2
    return asyncio.run(run_job(Path(args[0])))


if __name__ == "__main__":
    sys.exit(main())
