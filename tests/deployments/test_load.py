"""50 runs triggered at once over HTTP against PostgreSQL: all complete, none lost or doubled."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from notebook_jobs.deployments.api import FINAL_STATES
from tests.conftest import DATA
from tests.deployments.conftest import HTTPStack

RUNS = 50
REPEATS = 10  # keys sent a second time, concurrently with the rest


@pytest.mark.timeout(900)
def test_fifty_concurrent_triggers_all_complete_exactly_once(http_stack: HTTPStack) -> None:
    batch = f"load-{uuid.uuid4().hex[:8]}"
    keys = [f"{batch}-{i}" for i in range(RUNS)]
    calls = keys + keys[:REPEATS]

    def trigger(key: str) -> tuple[str, str]:
        run_id = http_stack.api.trigger(
            "run-notebook",
            "adhoc",
            {"notebook": str(DATA / "trivial.ipynb")},
            idempotency_key=key,
            tags=[batch],
        )
        return key, run_id

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        answers = list(pool.map(trigger, calls))
    by_key: dict[str, set[str]] = {}
    for key, run_id in answers:
        by_key.setdefault(key, set()).add(run_id)
    assert len(by_key) == RUNS
    assert all(len(ids) == 1 for ids in by_key.values()), (
        "a repeated idempotency key created a second run"
    )

    deadline = time.monotonic() + 600
    while True:
        runs = httpx.post(
            f"{http_stack.api_url}/flow_runs/filter",
            json={"flow_runs": {"tags": {"all_": [batch]}}, "limit": 200},
            headers=http_stack.headers(),
        ).json()
        states = Counter(run["state"]["type"] for run in runs)
        if sum(states[s] for s in FINAL_STATES) == len(runs) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert len(runs) == RUNS, f"{len(runs)} runs exist for {RUNS} keys"
    assert states == Counter({"COMPLETED": RUNS}), states
    assert {run["idempotency_key"] for run in runs} == set(keys)
