"""Reading back what a Slurm job writes in its folder, as the job writes it."""

from __future__ import annotations

import json
from pathlib import Path

from notebook_jobs.tasks.engine.slurm.watch import read_events


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
