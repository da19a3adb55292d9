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

Followers: the local server's worker also listens on a Unix socket
(``RunChannel``). A client on the same machine (``nbjobs run``) that has created a
flow run through the API sends ``{"follow": "<flow run id>"}``; the worker starts
that run at once (``submit_now``) instead of at its next poll, and streams its cell
progress, log lines and result back as JSON lines, so the client neither polls the
API nor waits for the next poll. The result is sent as soon as ``result.json`` is
stored; the run's Prefect artifacts and final state follow a moment later.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import anyio.abc
from prefect import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_engine import run_flow
from prefect.states import Cancelled
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from notebook_jobs.deployments import flow_process
from notebook_jobs.deployments.definitions import (
    ENDPOINT_JOB_ENTRYPOINT,
    ENDPOINTS_ENTRYPOINT,
    ENTRYPOINTS,
    IN_PROCESS_ENTRYPOINTS,
)
from notebook_jobs.deployments.file_server import FILES_URL_ENV
from notebook_jobs.deployments.run_channel import RunChannel
from notebook_jobs.tasks.executors import using_caller_environment
from notebook_jobs.tasks.runtime import current_runtime, using_runtime

CANCEL_POLL_SECONDS = 1.0


async def final_message(flow_run: FlowRun, state: Any) -> dict[str, Any]:
    """What a follower gets when the run ends: its state, and its result or error."""
    from notebook_jobs.flows.run_notebook import run_outcome

    message: dict[str, Any] = {
        "event": "final",
        "state": state.type.value,
        "message": state.message,
        "document": None,
        "error": None,
    }
    try:
        outcome = await run_outcome(state, (flow_run.parameters or {}).get("store"))
    except Exception as error:  # the follower falls back to the API
        outcome = error
    if isinstance(outcome, BaseException):
        message["document"] = getattr(outcome, "result", None)
        message["error"] = {"name": type(outcome).__name__, "message": str(outcome)}
    elif outcome is not None:
        message["document"] = outcome.model_dump(mode="json")
    return message


def in_process_entrypoint(deployment: Any) -> str | None:
    """The deployment's entrypoint if this worker runs its runs in-process, else None.

    Ours run in-process, unless the deployment has pull steps (prefect.yaml's git_clone):
    those run where the steps put them, in a subprocess, as Prefect's process worker runs
    them.
    """
    if deployment.entrypoint in IN_PROCESS_ENTRYPOINTS and not deployment.pull_steps:
        return str(deployment.entrypoint)
    return None


class SubprocessJobConfiguration(ProcessJobConfiguration):
    """A process job's configuration whose runs of our flows start in a runtime.

    A deployment of one of our flows that left the job's ``command`` empty runs
    ``python -m notebook_jobs.deployments.flow_process`` instead of Prefect's engine
    module: the engine, inside a ``Runtime`` (see there). A command the deployment set
    is kept.
    """

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: Any = None,
        flow: Any = None,
        work_pool: Any = None,
        worker_name: str | None = None,
        worker_id: Any = None,
    ) -> None:
        if (
            self.command is None
            and deployment is not None
            and deployment.entrypoint in IN_PROCESS_ENTRYPOINTS
        ):
            self.command = flow_process.command()
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )


class InProcessJobConfiguration(SubprocessJobConfiguration):
    """A process job's configuration, not filled in for runs that stay in the worker.

    Filling it in serialises every Prefect setting into environment variables for the
    subprocess: 45 ms of CPU per run here, for a run that has no subprocess.
    """

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: Any = None,
        flow: Any = None,
        work_pool: Any = None,
        worker_name: str | None = None,
        worker_id: Any = None,
    ) -> None:
        if deployment is not None and in_process_entrypoint(deployment) is not None:
            return
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )


def with_files_url(configuration: ProcessJobConfiguration) -> ProcessJobConfiguration:
    """A run's job configuration, its environment naming this runtime's file server.

    A run in a subprocess of the worker links its local-store files to the worker's file
    server too: its environment is the one way the address reaches it.
    """
    files_url = current_runtime().files_url
    if files_url:
        configuration.env = {**configuration.env, FILES_URL_ENV: files_url}
    return configuration


class SubprocessWorker(ProcessWorker):
    """Prefect's process worker (``nbjobs serve --isolation process``), whose runs of our
    flows start in a runtime that links to this worker's file server."""

    job_configuration = SubprocessJobConfiguration

    @classmethod
    def __dispatch_key__(cls) -> str:
        """Its own key in Prefect's registry of worker types.

        It serves pools of type ``process`` (its ``type``), but must not take the place
        of Prefect's process worker there (Prefect warned of that in every worker's log).
        """
        return "nbjobs-subprocess"

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        """Run the flow run in a subprocess, as Prefect's process worker does."""
        return await super().run(flow_run, with_files_url(configuration), task_status)


class InProcessWorker(ProcessWorker):
    """Runs ``run-notebook`` and ``serve-endpoints`` deployments in-process; others as
    subprocesses."""

    job_configuration = InProcessJobConfiguration

    @classmethod
    def __dispatch_key__(cls) -> str:
        """Its own key in Prefect's registry of worker types (see ``SubprocessWorker``)."""
        return "nbjobs-in-process"

    _entrypoints: dict[str, str | None]
    channel: RunChannel | None = None

    async def _in_process_entrypoint(self, flow_run: FlowRun) -> str | None:
        if not hasattr(self, "_entrypoints"):
            self._entrypoints = {}
        key = str(flow_run.deployment_id)
        if key not in self._entrypoints:
            async with get_client() as client:
                deployment = await client.read_deployment(flow_run.deployment_id)  # type: ignore[arg-type]
            self._entrypoints[key] = in_process_entrypoint(deployment)
        return self._entrypoints[key]

    async def submit_now(self, run_id: str) -> None:
        """Start one scheduled ``run-notebook`` flow run of this pool now, in this process.

        A poll would find the run within ``PREFECT_WORKER_QUERY_SECONDS`` and take it
        through Prefect's whole submission: the poll query (after which the server
        marks queues and deployments ready, writes that contend for SQLite's lock), the
        deployment read twice, the job configuration (every setting serialised to
        environment variables), worker labels, a Submitting state and the process id:
        half a second on the local server, for a run that needs no process. This
        keeps what makes a run start exactly once: the duplicate guard of runs being
        submitted, the worker's limit, and the server's Pending transition, which
        refuses a run that a poll (or another worker) took first.

        Uses the submission internals of Prefect 3.8's ``BaseWorker`` (pinned < 3.9).
        """
        from uuid import UUID

        flow_run = await self.client.read_flow_run(UUID(run_id))
        if (
            flow_run.state is None
            or flow_run.state.type != StateType.SCHEDULED
            or flow_run.work_pool_name != self._work_pool_name
            or flow_run.deployment_id is None
            or await self._in_process_entrypoint(flow_run) not in ENTRYPOINTS
            or flow_run.id in self._submitting_flow_run_ids  # after the await: a poll has it
        ):
            return  # not ours to start now: the regular poll decides
        if self._limiter is not None:
            try:
                self._limiter.acquire_on_behalf_of_nowait(flow_run.id)
            except anyio.WouldBlock:
                return  # at the worker's limit: the run waits for a poll, as any other
        self._submitting_flow_run_ids.add(flow_run.id)
        try:
            started = await self._propose_pending_state(flow_run)
        finally:
            self._submitting_flow_run_ids.discard(flow_run.id)
        if not started:
            self._release_limit_slot(flow_run.id)
            return
        assert self._runs_task_group is not None
        self._runs_task_group.start_soon(self._run_submitted, flow_run)

    async def _run_submitted(self, flow_run: FlowRun) -> None:
        try:
            await self.run(flow_run, configuration=None)  # type: ignore[arg-type]
        except Exception as error:
            self._logger.exception("flow run %s could not run", flow_run.id)
            await self._propose_crashed_state(flow_run, f"{type(error).__name__}: {error}")
        finally:
            self._release_limit_slot(flow_run.id)

    async def listen(self, path: Path) -> asyncio.Server:
        """Serve followers on the Unix socket ``path`` (see the module docstring)."""
        pending: set[asyncio.Task[Any]] = set()

        async def look_for_runs(run_id: str) -> None:
            try:
                await self.submit_now(run_id)
            except Exception as error:  # the next poll tries again
                self._logger.warning("could not submit flow run %s now: %s", run_id, error)

        def on_follow(run_id: str) -> None:
            task = asyncio.ensure_future(look_for_runs(run_id))
            pending.add(task)
            task.add_done_callback(pending.discard)

        self.channel = RunChannel()
        self.channel.attach()
        return await self.channel.serve(path, on_follow)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        """Run the flow run in this process, or delegate to a subprocess for other flows."""
        entrypoint = await self._in_process_entrypoint(flow_run) if flow_run.deployment_id else None
        if entrypoint not in IN_PROCESS_ENTRYPOINTS:
            return await super().run(flow_run, with_files_url(configuration), task_status)
        chosen: Any
        if entrypoint == ENDPOINTS_ENTRYPOINT:
            from notebook_jobs.flows.serve_endpoints import run_endpoints as chosen
        elif entrypoint == ENDPOINT_JOB_ENTRYPOINT:
            from notebook_jobs.flows.run_endpoint import run_endpoint as chosen
        else:
            from notebook_jobs.flows.run_notebook import run_notebook as chosen

        if task_status is not None:
            task_status.started(os.getpid())
        running: Any = run_flow(chosen, flow_run=flow_run, return_type="state")
        handed = self.channel.environment_for(flow_run.idempotency_key) if self.channel else None
        runtime = current_runtime()
        if self.channel is not None:  # its followers hear the run's cells and result
            runtime = self.channel.sinks(runtime)
        # the task started here keeps both
        with using_caller_environment(handed), using_runtime(runtime):
            execution: asyncio.Future[Any] = asyncio.ensure_future(running)
        watcher = asyncio.ensure_future(_cancel_when_asked(flow_run, execution))
        state: Any = None
        try:
            state = await execution
            status = 0 if state.is_completed() else 1
        except Exception as error:
            # The engine could not reach the server before the run started (a server
            # restart): the run would stay PENDING, and no worker takes a PENDING run.
            if not await schedule_again_if_pending(flow_run.id, error, self._logger):
                raise
            # Scheduled again: nothing crashed, and a non-zero status would have the
            # worker propose Crashed for it
            return ProcessWorkerResult(identifier=str(flow_run.id), status_code=0)
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise
            state = Cancelled(message="cancelled; the kernel was shut down")
            async with get_client() as client:
                await client.set_flow_run_state(flow_run.id, state, force=True)
            status = 1
        finally:
            watcher.cancel()
            if (
                self.channel is not None
                and state is not None
                and self.channel.following(str(flow_run.id))
            ):
                self.channel.publish(str(flow_run.id), await final_message(flow_run, state))
        return ProcessWorkerResult(identifier=str(flow_run.id), status_code=status)


RECOVERY_SECONDS = 300.0  # how long a run that could not start waits for the server


async def schedule_again_if_pending(run_id: Any, error: BaseException, logger: Any) -> bool:
    """Put a run that never started back to Scheduled, so that a worker takes it again.

    Only a run still PENDING: one that reached RUNNING has started and ends (or is
    marked Crashed) by its own heartbeats. Waits up to ``RECOVERY_SECONDS`` for the
    server to answer.

    Returns:
        Whether the run was scheduled again.
    """
    from prefect.states import Scheduled

    deadline = asyncio.get_running_loop().time() + RECOVERY_SECONDS
    delay = 1.0
    while True:
        try:
            async with get_client() as client:
                current = await client.read_flow_run(run_id)
                if current.state is None or current.state.type != StateType.PENDING:
                    return False
                await client.set_flow_run_state(
                    run_id,
                    Scheduled(message=f"the worker could not start it ({error}); scheduled again"),
                    force=True,
                )
                logger.warning("flow run %s could not start (%s); scheduled again", run_id, error)
                return True
        except Exception as failure:  # the server is still away: ask again
            if asyncio.get_running_loop().time() > deadline:
                logger.error("flow run %s stays PENDING: %s", run_id, failure)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)


async def _cancel_when_asked(flow_run: FlowRun, execution: asyncio.Future[Any]) -> None:
    """Cancel ``execution`` once the server marks the flow run CANCELLING."""
    async with get_client() as client:
        while not execution.done():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            current = await client.read_flow_run(flow_run.id)
            if current.state and current.state.type == StateType.CANCELLING:
                execution.cancel()
                return
