"""``run_notebook_sync``: a Python caller gets the result, not a coroutine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from notebook_jobs.blocks.exceptions import NotebookExecutionError
from notebook_jobs.deployments.python_api import run_notebook_sync
from tests.conftest import DATA, EXAMPLES


@pytest.fixture
def configured(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A configured server, as a user's PREFECT_API_URL names one: no local server."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    return prefect_server


def test_sync_code_gets_the_result(configured: str) -> None:
    result = run_notebook_sync(str(EXAMPLES / "report.ipynb"), parameters={"n": 5})
    assert result.status == "completed" and result.outputs["total"] == 55


def test_a_running_event_loop_gets_the_result_too(configured: str) -> None:
    """As in a Jupyter cell, where an event loop is already running."""

    async def in_a_loop() -> Any:
        return run_notebook_sync(str(EXAMPLES / "report.ipynb"), parameters={"n": 2})

    assert asyncio.run(in_a_loop()).outputs["total"] == 5


def test_a_failing_notebook_raises_with_its_result(configured: str) -> None:
    with pytest.raises(NotebookExecutionError) as caught:
        run_notebook_sync(str(DATA / "raises.ipynb"))
    assert caught.value.result["status"] == "failed"
