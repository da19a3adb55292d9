"""A process-pool worker that runs notebook flow runs inside its own process.

Prefect's ``ProcessWorker`` starts a Python subprocess per flow run, which then
imports Prefect and the flow before anything happens: measured here, about 6 s of a
trivial notebook's trigger-to-completed time, and on 2 cores four concurrent runs
spend more CPU importing than executing. The notebook already runs in a separate
process (its kernel), so ``InProcessWorker`` runs ``run-notebook`` flow runs as
asyncio tasks in the worker: same work pool, same deployments, same states, logs and
artifacts, without the subprocess. Deployments of any other flow still get
subprocesses (``ProcessWorker``'s behaviour), and ``nbjobs serve --isolation process``
or ``prefect worker start --pool notebook-jobs`` give every run its own process.

Cancellation: the worker watches each run's state; when the server marks it
CANCELLING, it cancels the task (the kernel is shut down) and the run ends Cancelled.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import anyio.abc
from prefect import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_engine import run_flow
from prefect.states import Cancelled
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from deployments.definitions import ENTRYPOINT

CANCEL_POLL_SECONDS = 1.0


class InProcessWorker(ProcessWorker):
    """Runs ``flows.run_notebook.run_notebook`` deployments in-process; others as subprocesses."""

    _entrypoints: dict[str, str | None]

    async def _entrypoint_of(self, flow_run: FlowRun) -> str | None:
        if not hasattr(self, "_entrypoints"):
            self._entrypoints = {}
        key = str(flow_run.deployment_id)
        if key not in self._entrypoints:
            async with get_client() as client:
                deployment = await client.read_deployment(flow_run.deployment_id)  # type: ignore[arg-type]
            self._entrypoints[key] = deployment.entrypoint
        return self._entrypoints[key]

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        """Run the flow run in this process, or delegate to a subprocess for other flows."""
        if flow_run.deployment_id is None or await self._entrypoint_of(flow_run) != ENTRYPOINT:
            return await super().run(flow_run, configuration, task_status)
        from flows.run_notebook import run_notebook

        if task_status is not None:
            task_status.started(os.getpid())
        execution = asyncio.ensure_future(
            run_flow(run_notebook, flow_run=flow_run, return_type="state")  # type: ignore[arg-type]
        )
        watcher = asyncio.ensure_future(_cancel_when_asked(flow_run, execution))
        try:
            state: Any = await execution
            status = 0 if state.is_completed() else 1
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise
            async with get_client() as client:
                await client.set_flow_run_state(
                    flow_run.id,
                    Cancelled(message="cancelled; the kernel was shut down"),
                    force=True,
                )
            status = 1
        finally:
            watcher.cancel()
        return ProcessWorkerResult(identifier=str(flow_run.id), status_code=status)


async def _cancel_when_asked(flow_run: FlowRun, execution: asyncio.Future[Any]) -> None:
    """Cancel ``execution`` once the server marks the flow run CANCELLING."""
    async with get_client() as client:
        while not execution.done():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            current = await client.read_flow_run(flow_run.id)
            if current.state and current.state.type == StateType.CANCELLING:
                execution.cancel()
                return
