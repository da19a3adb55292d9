"""Notebooks in other languages than Python on every path a run can take, papermill as
the oracle: a worker's executor that keeps Python kernels started ahead, and a Slurm
job. (The local server's worker, through ``nbjobs run``: ``test_papermill_parity``.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nbformat
import pytest

from notebook_jobs.tasks.executors import LocalExecutor
from notebook_jobs.tasks.models import NotebookResult
from notebook_jobs.tasks.runtime import using_executor
from tests.conftest import EXAMPLES, run_flow, service, state_outcome
from tests.oracle import NOTEBOOKS, PARAMETERS, papermill_seen, seen

pytestmark = pytest.mark.usefixtures("prefect_server", "other_kernels")


@pytest.fixture(scope="session")
def other_kernels() -> str:
    """The bash and R kernels (tests/services/kernels.sh)."""
    return service("kernels.sh", "the bash and R kernels")


def stored_seen(result: NotebookResult) -> list[Any]:
    return seen(nbformat.read(Path(result.artefacts.prefix) / "notebook.ipynb", as_version=4))


@pytest.mark.parametrize("kernel", sorted(NOTEBOOKS))
def test_a_pooling_executor_runs_other_languages_as_papermill(kernel: str, tmp_path: Path) -> None:
    """A pre-started kernel is moved to its run's folder by running Python in it: the
    executor keeps Python kernels only, and starts any other for its run."""

    async def runs() -> tuple[Any, Any, int]:
        async with LocalExecutor(pool_size=2) as executor:
            with using_executor(executor):
                python = await run_notebook(notebook=str(EXAMPLES / "report.ipynb"))
                other = await run_notebook(
                    notebook=str(NOTEBOOKS[kernel]),
                    parameters=PARAMETERS,
                    store=str(tmp_path / "store"),
                    return_state=True,
                )
                assert executor.pool(kernel) is None
                pool = executor.pool("python3")
                return python, other, pool.started if pool else 0

    from notebook_jobs.flows.run_notebook import run_notebook

    python, state, pooled = asyncio.run(runs())
    assert python.success and pooled >= 2  # Python kernels still come from the pool
    assert state.is_completed(), state.message
    result: NotebookResult = state_outcome(state)
    assert result.kernel == kernel
    assert stored_seen(result) == papermill_seen(NOTEBOOKS[kernel], tmp_path / "pm", kernel)


@pytest.mark.parametrize("kernel", sorted(NOTEBOOKS))
def test_a_slurm_job_runs_other_languages_as_papermill(
    kernel: str, slurm_cluster: str, tmp_path: Path
) -> None:
    state = run_flow(
        notebook=str(NOTEBOOKS[kernel]),
        parameters=PARAMETERS,
        cluster=slurm_cluster,
        store=str(tmp_path / "store"),
    )
    assert state.is_completed(), state.message
    result: NotebookResult = state_outcome(state)
    assert result.slurm is not None and result.slurm.state == "COMPLETED"
    assert stored_seen(result) == papermill_seen(NOTEBOOKS[kernel], tmp_path / "pm", kernel)
