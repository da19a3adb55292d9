"""Reading back what a Slurm job writes in its folder, as the job writes it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from notebook_jobs.tasks.engine.layout import REPORT_NAME
from notebook_jobs.tasks.engine.slurm.commands import JobStatus
from notebook_jobs.tasks.engine.slurm.watch import (
    outcome_report,
    read_events,
    running_cell,
    wait_for_report,
)
from notebook_jobs.tasks.models import ExecutionReport

pytestmark = pytest.mark.unit


def line(phase: str, index: int, done: int) -> str:
    record = {"phase": phase, "index": index, "done": done, "total": 3}
    if phase == "end":
        record.update(status="ok", duration_seconds=0.01)
    return json.dumps(record) + "\n"


def test_a_line_the_job_is_still_writing_waits_for_the_next_read(tmp_path: Path) -> None:
    """A half-written line used to raise, and the error cancelled the healthy job."""
    path = tmp_path / "events.jsonl"
    whole, partial = line("start", 1, 0), line("end", 1, 1)
    path.write_text(whole + partial[:20])
    events, offset = read_events(path, 0)
    assert [(e.phase, e.index) for e in events] == [("start", 1)]
    assert offset == len(whole.encode())
    path.write_text(whole + partial)
    events, offset = read_events(path, offset)
    assert [(e.phase, e.done, e.report.status if e.report else None) for e in events] == [
        ("end", 1, "ok")
    ]
    assert read_events(path, offset) == ([], offset)


def test_an_unreadable_line_is_skipped_and_a_missing_file_is_no_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert read_events(path, 0) == ([], 0)
    path.write_text("not json\n" + line("start", 2, 1))
    events, _ = read_events(path, 0)
    assert [(e.phase, e.index) for e in events] == [("start", 2)]


def test_a_job_ended_before_its_report_names_the_cell_its_events_last_started(
    tmp_path: Path,
) -> None:
    """CI once saw TIMEOUT in sacct before the job's SIGTERM report had landed."""
    (tmp_path / "events.jsonl").write_text(
        line("start", 0, 0) + line("end", 0, 1) + line("start", 2, 1)
    )
    assert running_cell(tmp_path) == 2
    report = outcome_report(
        JobStatus("9", "TIMEOUT", 0), None, kernel="python3", stderr_tail="", running=2
    )
    assert report.error is not None and report.error.cell_index == 2
    assert report.error.message == "Slurm job 9 ended TIMEOUT (exit code 0) while running cell 2"
    (tmp_path / "events.jsonl").write_text(line("start", 0, 0) + line("end", 0, 1))
    assert running_cell(tmp_path) is None
    assert running_cell(tmp_path / "no job") is None


def test_a_report_written_a_moment_after_the_verdict_is_waited_for(tmp_path: Path) -> None:
    now = "2026-11-21T00:00:00Z"
    written = ExecutionReport.model_validate(
        {"status": "cancelled", "kernel": "python3", "started_at": now, "finished_at": now}
    )
    late = threading.Timer(0.5, (tmp_path / REPORT_NAME).write_text, [written.model_dump_json()])
    late.start()
    try:
        assert wait_for_report(tmp_path, seconds=30) == written
    finally:
        late.cancel()
    assert wait_for_report(tmp_path / "no job", seconds=0.3) is None
