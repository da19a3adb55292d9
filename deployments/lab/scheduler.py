"""``NotebookJobsScheduler``: jupyter-scheduler's ``BaseScheduler`` on Prefect.

Every method is the REST API's: the handlers await it (``ensure_async``), and the
blocking calls to Prefect run in a thread so the Jupyter server goes on serving.
Failures the user can fix are ``SchedulerError`` in one line; jupyter-scheduler's
handlers answer them as HTTP 500 with that line, and its dialogs show it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.executors import ExecutionManager
from jupyter_scheduler.models import (
    CountJobsQuery,
    CreateJob,
    CreateJobFromDefinition,
    DescribeJob,
    DescribeJobDefinition,
    JobFeature,
    ListJobsQuery,
    ListJobsResponse,
    UpdateJob,
)
from traitlets import Bool
from traitlets import Type as TraitType

from notebook_jobs.blocks.exceptions import APIError
from notebook_jobs.deployments.api import API_PAGE_SIZE
from notebook_jobs.deployments.client_run import hand_over, parameter_order
from notebook_jobs.deployments.lab.compute import Compute, compute_of
from notebook_jobs.deployments.lab.connection import Connection
from notebook_jobs.deployments.lab.definition_methods import DefinitionMethods
from notebook_jobs.deployments.lab.files import delete_stored
from notebook_jobs.deployments.lab.job_definitions import notebook_path
from notebook_jobs.deployments.lab.jobs import (
    LAB_TRIGGER,
    NOTEBOOK_KERNEL,
    STATE_TYPES,
    TOKEN_KEY,
    describe_job,
    runs_filter,
    runs_sort,
    typed_parameters,
)
from notebook_jobs.deployments.lab.plumbing import offset_of, start_now
from notebook_jobs.deployments.papermill_cli import refuse_local_plain_secrets
from notebook_jobs.tasks.names import RUN_FLOW

STOPPED_MESSAGE = "stopped from JupyterLab"
# how long a deleted job's run may take to stop (its worker looks every second; a Slurm
# job is cancelled with scancel) before the delete gives up and says so
DELETE_WAIT_SECONDS = 30.0


class PrefectRuns(ExecutionManager):  # type: ignore[misc]
    """What the dialog offers (``/scheduler/config``); runs are executed by Prefect's
    workers, never by this class."""

    def execute(self) -> None:  # pragma: no cover - never instantiated
        raise NotImplementedError("notebook-jobs runs notebooks on Prefect's workers")

    def supported_features(cls) -> dict[JobFeature, bool]:  # called on the class itself
        offered = {
            JobFeature.job_name,
            JobFeature.parameters,
            JobFeature.output_formats,
            JobFeature.job_definition,
            JobFeature.idempotency_token,
            JobFeature.tags,
            JobFeature.stop_job,
            JobFeature.delete_job,
        }
        return {feature: feature in offered for feature in JobFeature}


class NotebookJobsScheduler(DefinitionMethods):
    """Jobs are ``run-notebook`` flow runs and job definitions notebook deployments, on
    the configured Prefect server or the local one."""

    execution_manager_class = TraitType(
        default_value=PrefectRuns,
        klass=ExecutionManager,
        config=True,
        help="What the dialog offers; runs are Prefect's.",
    )
    delete_stored_outputs = Bool(
        False,
        config=True,
        help="Whether deleting a job deletes its stored artefacts too (default: only the "
        "flow run goes; the store keeps the executed notebook and its files).",
    )
    task_runner = None  # Prefect's scheduler makes the scheduled runs

    def __init__(
        self,
        root_dir: str,
        environments_manager: Any,
        db_url: str | None = None,  # jupyter-scheduler's database: not used
        config: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root_dir=root_dir, environments_manager=environments_manager, config=config, **kwargs
        )

    async def create_job(self, model: CreateJob) -> str:
        if model.job_definition_id:
            return await self.create_job_from_definition(
                model.job_definition_id, CreateJobFromDefinition(parameters=model.parameters)
            )
        return await self._run(self._create_job, model)

    def _create_job(self, model: CreateJob) -> str:
        path = notebook_path(self.root_dir, model.input_uri)
        parameters = typed_parameters(model.parameters, self._declared(str(path)))
        refuse_local_plain_secrets(str(path), parameters)  # before any run can keep it
        compute = compute_of(model.compute_type)
        request: dict[str, Any] = {"notebook": str(path), "parameters": parameters}
        kernel = model.runtime_environment_name
        if kernel and kernel != NOTEBOOK_KERNEL:
            request["kernel"] = kernel
        if compute.cluster:
            request["cluster"] = compute.cluster
        order = parameter_order(parameters)
        if order:
            request["parameter_order"] = order
        token = model.idempotency_token
        key = f"{TOKEN_KEY}{token}" if token else f"nbjobs-run-{uuid.uuid4()}"
        tags = tuple(model.tags or ())
        connection = self.connection()
        with connection.client() as api:
            if connection.local is not None and compute == Compute():
                # the local worker, with the Jupyter server's environment, at once
                run_id, channel = hand_over(
                    api,
                    connection.local,
                    request,
                    LAB_TRIGGER,
                    name=model.name,
                    tags=tags,
                    idempotency_key=key,
                )
                start_now(connection.local, run_id, channel)
                return run_id
            return api.trigger(
                RUN_FLOW,
                compute.deployment,
                request,
                idempotency_key=key,
                tags=[f"trigger:{LAB_TRIGGER}", *tags],
                work_queue_name=compute.queue,
                name=model.name,
            )

    async def update_job(self, job_id: str, model: UpdateJob) -> None:
        await self._run(self._update_job, job_id, model)

    def _update_job(self, job_id: str, model: UpdateJob) -> None:
        with self.connection().client() as api:
            run = self._get(api, f"/flow_runs/{job_id}", "job")
            if model.name and model.name != run["name"]:
                api.request("PATCH", f"/flow_runs/{job_id}", json={"name": model.name})

    async def list_jobs(self, query: ListJobsQuery) -> ListJobsResponse:
        return await self._run(self._list_jobs, query)

    def _list_jobs(self, query: ListJobsQuery) -> ListJobsResponse:
        if query.status and not STATE_TYPES[query.status]:
            return ListJobsResponse(jobs=[], total_count=0)  # Prefect has no such state
        offset = offset_of(query.next_token)
        criteria = runs_filter(query, now=datetime.now(timezone.utc))
        connection = self.connection()
        with connection.client() as api:
            body = {
                **criteria,
                "sort": runs_sort(query),
                "limit": min(int(query.max_items or API_PAGE_SIZE), API_PAGE_SIZE),
                "offset": offset,
            }
            runs = api.request("POST", "/flow_runs/filter", json=body, idempotent=True).json()
            total = api.request("POST", "/flow_runs/count", json=criteria, idempotent=True).json()
            definitions = self._definition_ids(api, runs)
        jobs = [self._described(connection, run, definitions) for run in runs]
        seen = offset + len(runs)
        return ListJobsResponse(
            jobs=jobs, total_count=total, next_token=str(seen) if seen < total else None
        )

    def _described(
        self, connection: Connection, run: dict[str, Any], definitions: set[str]
    ) -> DescribeJob:
        job = describe_job(run, definitions=definitions, run_link=connection.run_link(run["id"]))
        self.add_job_files(job)
        return job

    async def count_jobs(self, query: CountJobsQuery) -> int:
        return await self._run(self._count_jobs, query)

    def _count_jobs(self, query: CountJobsQuery) -> int:
        if not STATE_TYPES[query.status]:
            return 0
        criteria = runs_filter(ListJobsQuery(status=query.status), now=datetime.now(timezone.utc))
        with self.connection().client() as api:
            count: int = api.request(
                "POST", "/flow_runs/count", json=criteria, idempotent=True
            ).json()
        return count

    async def get_job(self, job_id: str, job_files: bool | None = True) -> DescribeJob:
        return await self._run(self.get_job_blocking, job_id, bool(job_files))

    def get_job_blocking(self, job_id: str, job_files: bool = True) -> DescribeJob:
        """``get_job`` for a caller already in a thread (``files.StoredJobFiles``)."""
        connection = self.connection()
        with connection.client() as api:
            run = self._get(api, f"/flow_runs/{job_id}", "job")
            definitions = self._definition_ids(api, [run])
        job = describe_job(run, definitions=definitions, run_link=connection.run_link(job_id))
        if job_files:
            self.add_job_files(job)
        return job

    async def stop_job(self, job_id: str) -> None:
        await self._run(self._stop_job, job_id)

    def _stop_job(self, job_id: str) -> None:
        with self.connection().client() as api:
            run = self._get(api, f"/flow_runs/{job_id}", "job")  # one line if it is gone
            api.cancel(job_id, STOPPED_MESSAGE, state=(run.get("state") or {}).get("type"))

    async def delete_job(self, job_id: str) -> None:
        await self._run(self._delete_job, job_id)

    def _delete_job(self, job_id: str) -> None:
        """Stop the run and wait for it to end (its worker watches for the cancel), so
        nothing runs or writes on once its record is gone; then delete it."""
        with self.connection().client() as api:
            run = self._get(api, f"/flow_runs/{job_id}", "job")
            api.cancel(job_id, STOPPED_MESSAGE, state=(run.get("state") or {}).get("type"))
            try:
                api.wait(job_id, timeout=DELETE_WAIT_SECONDS)
            except TimeoutError:
                raise SchedulerError(
                    f"job {job_id} is still stopping after {DELETE_WAIT_SECONDS:.0f} s; "
                    "delete it again once it shows Stopped"
                ) from None
            if self.delete_stored_outputs:
                delete_stored(run)
            try:
                api.request("DELETE", f"/flow_runs/{job_id}")
            except APIError as error:
                if error.status_code != 404:
                    raise

    def get_staging_paths(self, model: DescribeJob | DescribeJobDefinition) -> dict[str, str]:
        """Unused: outputs come from the run's store (``files.StoredJobFiles``)."""
        return {}
