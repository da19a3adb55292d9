"""The history's table and chart, and numbers at full precision (pure; the real series
through a server is ``tests/deployments/test_history.py``)."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone

import pytest

from notebook_jobs.tasks.chart import chart_data, trend_svg
from notebook_jobs.tasks.conditions import evaluate, parse_condition
from notebook_jobs.tasks.engine.numbers import number_text, signed
from notebook_jobs.tasks.history_table import HistoryRun, history_markdown, merged

pytestmark = pytest.mark.unit

START = datetime(2026, 12, 1, 6, tzinfo=timezone.utc)


def run(i: int, status: str = "completed", **outputs: object) -> HistoryRun:
    return HistoryRun(
        id=f"00000000-0000-0000-0000-00000000000{i}",
        name=f"report · {i}",
        started=START + timedelta(days=i),
        status=status,
        trigger="schedule",
        deployment="daily",
        parameters={"n": i},
        seconds=0.5,
        outputs=dict(outputs),
        error="cell 3: ValueError: boom" if status == "failed" else None,
    )


def test_numbers_keep_every_digit() -> None:
    assert number_text(51675.5) == "51675.5"
    assert number_text(1234567.0) == "1234567"  # not 1.23457e+06
    assert number_text(0.1) == "0.1" and number_text(3) == "3"
    assert signed(51675.5) == "+51675.5" and signed(-3) == "-3" and signed(1234567) == "+1234567"
    line = evaluate(parse_condition("outputs.total > 5"), {"outputs": {"total": 1234567.25}})
    assert line is not None and "1234567.25" in line


def test_changes_skip_runs_without_the_value_and_the_current_run_comes_first() -> None:
    older = [run(3, total=30.5), run(2, "failed"), run(1, total=10)]
    runs = merged(run(4, total=1234567, label="eu"), older)
    assert [r.id[-1] for r in runs] == ["4", "3", "2", "1"]
    assert runs[0].changes == {"total": 1234567 - 30.5}
    assert runs[1].changes == {"total": 20.5}  # from run 1: run 2 failed before gluing
    assert runs[2].changes == {} and runs[3].changes == {}


def test_the_markdown_has_a_chart_per_number_and_a_row_per_run() -> None:
    runs = merged(run(4, total=40, label="eu"), [run(3, "failed"), run(2, total=60, label="us")])
    markdown = history_markdown("report", runs, "http://127.0.0.1:4200")
    images = re.findall(r"!\[([^\]]+)\]\(data:image/svg\+xml;base64,([^)]+)\)", markdown)
    assert [alt for alt, _ in images] == ["total over the last 3 runs"]  # label is text
    data = chart_data(base64.b64decode(images[0][1]).decode())
    assert data == {
        "output": "total",
        "values": [60.0, None, 40.0],
        "status": ["completed", "failed", "completed"],
    }
    rows = [line for line in markdown.splitlines() if line.startswith("| [report")]
    assert len(rows) == 3
    assert "| 40 (-20) | eu |" in rows[0] and "| n=4 |" in rows[0]
    assert "| **failed**: cell 3: ValueError: boom |" in rows[1]
    assert "schedule · daily" in rows[2] and "| 2026-12-03 06:00:00 |" in rows[2]


def test_a_chart_marks_failures_and_holds_one_point() -> None:
    svg = trend_svg("total", [(1.0, "completed"), (None, "failed"), (2.0, "cached")])
    assert svg.count("<circle") == 2 and svg.count("<path") == 1  # the failure: a red cross
    single = trend_svg("total", [(5.0, "completed")])
    assert single.count("<circle") == 1 and "total: 5" in single
