"""Alert conditions: read as written, evaluated on a run's event payload."""

from __future__ import annotations

from typing import Any

import pytest

from notebook_jobs.blocks.exceptions import AlertConditionError
from notebook_jobs.tasks.conditions import evaluate, parse_condition

pytestmark = pytest.mark.unit


def payload(**given: Any) -> dict[str, Any]:
    return {
        "status": given.get("status", "completed"),
        "outputs": given.get("outputs", {}),
        "timings": {"total_seconds": given.get("seconds", 1.0)},
        "cells": [{"index": 3, "status": "ok", "duration_seconds": given.get("cell3", 1.0)}],
    }


@pytest.mark.parametrize(
    ("when", "run", "held"),
    [
        (
            "outputs.error_rate > 0.05",
            payload(outputs={"error_rate": 0.07}),
            "outputs.error_rate = 0.07 > 0.05",
        ),
        ("outputs.error_rate > 0.05", payload(outputs={"error_rate": 0.05}), None),
        ("outputs.error_rate > 0.05", payload(outputs={}), None),  # not reported: no alert
        ("outputs.error_rate > 0.05", payload(outputs={"error_rate": "high"}), None),
        (
            "outputs.stats.rows <= 10",
            payload(outputs={"stats": {"rows": 3}}),
            "outputs.stats.rows = 3 <= 10",
        ),
        ("status == failed", payload(status="failed"), "status = failed == failed"),
        ("status != completed", payload(status="completed"), None),
        (
            "outputs.currency == 'EUR'",
            payload(outputs={"currency": "EUR"}),
            "outputs.currency = EUR == EUR",
        ),
        ("outputs.ok == false", payload(outputs={"ok": False}), "outputs.ok = false == false"),
        ("duration>600", payload(seconds=601), "duration = 601 > 600"),
    ],
)
def test_conditions_hold_as_written(when: str, run: dict[str, Any], held: str | None) -> None:
    assert evaluate(parse_condition(when), run) == held


def test_a_cell_growing_past_k_times_its_median_is_flagged() -> None:
    condition = parse_condition("cells[3].duration > 3x median(5)")
    history = [payload(cell3=s) for s in (1.0, 1.2, 0.9, 1.1, 50.0, 1.0, 1.0)]  # newest first
    assert evaluate(condition, payload(cell3=2.0), history) is None
    assert (
        evaluate(condition, payload(cell3=4.0), history)
        == "cells[3].duration = 4 > 3 x median 1.1 (last 5 runs)"
    )
    assert evaluate(condition, payload(cell3=40.0), history[:2]) is None  # too few runs yet


GIB = 1024**3


def test_memory_conditions_read_sizes_and_medians() -> None:
    run = payload()
    run["resources"] = {"peak_memory_bytes": 3 * GIB}
    run["cells"][0]["peak_memory_bytes"] = GIB // 2
    assert evaluate(parse_condition("peak_memory > 2GiB"), run) == "peak_memory = 3 GiB > 2 GiB"
    assert evaluate(parse_condition("peak_memory > 4GiB"), run) is None
    earlier = [{"cells": [{"index": 3, "peak_memory_bytes": GIB // 8}]}] * 3
    assert (
        evaluate(parse_condition("cells[3].peak_memory > 2x median"), run, earlier)
        == "cells[3].peak_memory = 512 MiB > 2 x median 128 MiB (last 3 runs)"
    )
    assert evaluate(parse_condition("cells[3].peak_memory > 1GiB"), run) is None


@pytest.mark.parametrize(
    "when",
    [
        "peak_memory > 2 parsecs",
        "error_rate > 0.05",
        "outputs.x >> 1",
        "outputs.x > ",
        "status > 3x median",
        "outputs.x > 'a",
        "outputs.x > 2x median(1)",
        "duration > median",
        "outputs.x > 1 and 2",
    ],
)
def test_unreadable_conditions_say_what_is_understood(when: str) -> None:
    with pytest.raises(AlertConditionError) as raised:
        parse_condition(when)
    assert "\n" not in str(raised.value)
