"""``NotebookJobsScheduler``: jupyter-scheduler's ``BaseScheduler`` on Prefect.

Every method is the REST API's: the handlers await it (``ensure_async``), and the
blocking calls to Prefect run in a thread so the Jupyter server goes on serving.
Failures the user can fix are ``SchedulerError`` in one line; jupyter-scheduler's
handlers answer them as HTTP 500 with that line, and its dialogs show it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.executors import ExecutionManager
from jupyter_scheduler.models import (
    CountJobsQuery,
    CreateJob,
    CreateJobDefinition,
    CreateJobFromDefinition,
    DescribeJob,
    DescribeJobDefinition,
    JobFeature,
    ListJobDefinitionsQuery,
    ListJobDefinitionsResponse,
    ListJobsQuery,
    ListJobsResponse,
    UpdateJob,
    UpdateJobDefinition,
)
from jupyter_scheduler.scheduler import BaseScheduler
from traitlets import Bool
from traitlets import Type as TraitType

from notebook_jobs.blocks.exceptions import (
    APIError,
    ArtefactStoreError,
    LocalServerError,
    NotebookInputError,
)
from notebook_jobs.deployments.api import FINAL_STATES, PrefectHTTP
from notebook_jobs.deployments.client_run import hand_over, parameter_order
from notebook_jobs.deployments.lab.compute import Compute, compute_of
from notebook_jobs.deployments.lab.connection import Connection, connect
from notebook_jobs.deployments.lab.files import delete_stored
from notebook_jobs.deployments.lab.job_definitions import (
    definitions_filter,
    definitions_sort,
    deploy,
    describe_definition,
    notebook_path,
    schedule_of,
)
from notebook_jobs.deployments.lab.jobs import (
    LAB_TRIGGER,
    NOTEBOOK_KERNEL,
    RUN_FLOW,
    STATE_TYPES,
    TOKEN_KEY,
    describe_job,
    runs_filter,
    runs_sort,
    typed_parameters,
)
from notebook_jobs.deployments.light_commands import declared_parameters_light
from notebook_jobs.deployments.local_server import LocalServer

T = TypeVar("T")
PAGE = 200  # the most runs or deployments the API answers at once
_SCHEMA_TYPES = {
    "integer": "int",
    "number": "float",
    "string": "str",
    "boolean": "bool",
    "array": "list",
    "object": "dict",
}


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


def start_now(local: LocalServer, run_id: str, channel: socket.socket | None = None) -> None:
    """Have the local worker start ``run_id`` at once rather than at its next poll
    (``deployments/run_channel.py``): follow it, in a thread that reads what the worker
    sends until it ends or falls silent."""
    followed = local.follow(run_id, channel)
    if followed is None:
        return  # the worker's own poll takes it

    def drain() -> None:
        try:
            with followed, followed.makefile("rb") as lines:
                for _ in lines:
                    pass
        except OSError:  # silence (a long cell): the run goes on without a follower
            pass

    threading.Thread(target=drain, daemon=True, name=f"nbjobs-lab-{run_id}").start()


def declared_types(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A notebook deployment's parameters, typed as its schema types them."""
    properties = (((schema or {}).get("properties") or {}).get("parameters") or {}).get(
        "properties"
    ) or {}
    return [
        {"name": name, "type": _SCHEMA_TYPES.get(str(spec.get("type")))}
        for name, spec in properties.items()
    ]


class NotebookJobsScheduler(BaseScheduler):  # type: ignore[misc]
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

    # ----- plumbing

    def connection(self) -> Connection:
        return connect()

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in a thread, an expected failure as one-line ``SchedulerError``."""
        try:
            return await asyncio.to_thread(work, *args)
        except (APIError, ArtefactStoreError, LocalServerError, NotebookInputError) as error:
            raise SchedulerError(str(error)) from None

    @staticmethod
    def _get(api: PrefectHTTP, path: str, what: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = api.request("GET", path).json()
        except APIError as error:
            if error.status_code == 404:
                raise SchedulerError(f"no such {what}: it was deleted in Prefect") from None
            raise
        return found

    def _definition_ids(self, api: PrefectHTTP) -> set[str]:
        body = {**definitions_filter(), "limit": PAGE}
        found = api.request("POST", "/deployments/filter", json=body, idempotent=True).json()
        return {d["id"] for d in found}

    def _declared(self, path: str) -> list[dict[str, Any]]:
        declared = declared_parameters_light(path)
        if declared is None:  # another language: as papermill's translator reads it
            from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
            from notebook_jobs.tasks.engine.staging import declared_parameters

            declared = declared_parameters(parse_notebook(fetch_notebook_source(path)))
        return declared

    # ----- jobs

    async def create_job(self, model: CreateJob) -> str:
        if model.job_definition_id:
            return await self.create_job_from_definition(
                model.job_definition_id, CreateJobFromDefinition(parameters=model.parameters)
            )
        return await self._run(self._create_job, model)

    def _create_job(self, model: CreateJob) -> str:
        path = notebook_path(self.root_dir, model.input_uri)
        parameters = typed_parameters(model.parameters, self._declared(str(path)))
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
        offset = int(query.next_token or 0)
        criteria = runs_filter(query, now=datetime.now(timezone.utc))
        connection = self.connection()
        with connection.client() as api:
            body = {
                **criteria,
                "sort": runs_sort(query),
                "limit": min(int(query.max_items or PAGE), PAGE),
                "offset": offset,
            }
            runs = api.request("POST", "/flow_runs/filter", json=body, idempotent=True).json()
            total = api.request("POST", "/flow_runs/count", json=criteria, idempotent=True).json()
            definitions = self._definition_ids(api)
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
        return await self._run(self.get_job_now, job_id, bool(job_files))

    def get_job_now(self, job_id: str, job_files: bool = True) -> DescribeJob:
        """``get_job`` for a caller already in a thread (``files.StoredJobFiles``)."""
        connection = self.connection()
        with connection.client() as api:
            run = self._get(api, f"/flow_runs/{job_id}", "job")
            definitions = self._definition_ids(api) if run.get("deployment_id") else set()
        job = describe_job(run, definitions=definitions, run_link=connection.run_link(job_id))
        if job_files:
            self.add_job_files(job)
        return job

    async def stop_job(self, job_id: str) -> None:
        await self._run(self._stop_job, job_id)

    def _stop_job(self, job_id: str) -> None:
        with self.connection().client() as api:
            self._stop(api, job_id)

    def _stop(self, api: PrefectHTTP, job_id: str) -> None:
        """Cancel a run that has not started outright; ask a running one's worker to stop."""
        run = self._get(api, f"/flow_runs/{job_id}", "job")
        state = (run.get("state") or {}).get("type")
        message = "stopped from JupyterLab"
        if state in FINAL_STATES:
            return
        if state in ("SCHEDULED", "PENDING") and api.set_state(
            job_id, "CANCELLED", message, force=False
        ):
            return
        api.set_state(job_id, "CANCELLING", message)

    async def delete_job(self, job_id: str) -> None:
        await self._run(self._delete_job, job_id)

    def _delete_job(self, job_id: str) -> None:
        with self.connection().client() as api:
            self._stop(api, job_id)
            if self.delete_stored_outputs:
                self._delete_outputs(api, job_id)
            try:
                api.request("DELETE", f"/flow_runs/{job_id}")
            except APIError as error:
                if error.status_code != 404:
                    raise

    def _delete_outputs(self, api: PrefectHTTP, job_id: str) -> None:
        try:
            artefacts = api.result(job_id).get("artefacts") or {}
        except LookupError:
            return  # nothing was stored
        delete_stored(self._get(api, f"/flow_runs/{job_id}", "job"), artefacts)

    # ----- job definitions

    async def create_job_definition(self, model: CreateJobDefinition) -> str:
        return await self._run(self._create_job_definition, model)

    def _create_job_definition(self, model: CreateJobDefinition) -> str:
        path = notebook_path(self.root_dir, model.input_uri)
        name = model.name.replace("/", "-").strip() or path.stem
        connection = self.connection()
        with connection.client() as api:
            try:
                taken = api.request("GET", f"/deployments/name/{RUN_FLOW}/{name}").json()
            except APIError as error:
                if error.status_code != 404:
                    raise
                taken = None
        if taken is not None and f"notebook:{path.stem}" not in (taken.get("tags") or []):
            raise SchedulerError(
                f"the job definition {name!r} runs another notebook; choose another name"
            )
        kernel = model.runtime_environment_name
        return deploy(
            connection,
            notebook=str(path),
            name=name,
            parameters=typed_parameters(model.parameters, self._declared(str(path))),
            kernel=None if kernel == NOTEBOOK_KERNEL else kernel,
            compute=compute_of(model.compute_type),
            cron=model.schedule,
            timezone=model.timezone,
            cwd=str(path.parent),
        )

    async def update_job_definition(
        self, job_definition_id: str, model: UpdateJobDefinition
    ) -> None:
        await self._run(self._update_job_definition, job_definition_id, model)

    def _update_job_definition(self, job_definition_id: str, model: UpdateJobDefinition) -> None:
        given = model.dict(exclude_unset=True)
        connection = self.connection()
        with connection.client() as api:
            current = self._get(api, f"/deployments/{job_definition_id}", "job definition")
            shown = describe_definition(current)
            changed = {
                key: value
                for key, value in given.items()
                if key in ("schedule", "timezone", "parameters", "runtime_environment_name")
                or key in ("compute_type", "input_uri", "name")
                if value is not None and value != getattr(shown, key, None)
            }
            if changed.get("name"):
                raise SchedulerError(
                    "a job definition's name is its deployment's name in Prefect and cannot "
                    "change; create a new definition under the new name"
                )
            paused = current.get("paused", False)
            if changed:
                self._redeploy(connection, current, model, changed)
            if "active" in given and given["active"] is not None:
                paused = not given["active"]
            if paused != current.get("paused", False) or changed:
                api.request("PATCH", f"/deployments/{job_definition_id}", json={"paused": paused})

    def _redeploy(
        self,
        connection: Connection,
        current: dict[str, Any],
        model: UpdateJobDefinition,
        changed: dict[str, Any],
    ) -> None:
        """``nbjobs deploy`` again with what changed, the rest as deployed."""
        stored = current.get("parameters") or {}
        if "input_uri" in changed:
            notebook = str(notebook_path(self.root_dir, changed["input_uri"]))
            declared = self._declared(notebook)
        else:
            notebook = str(stored["notebook"])
            declared = declared_types(current.get("parameter_openapi_schema"))
        parameters = (
            typed_parameters(model.parameters, declared)
            if "parameters" in changed
            else dict(stored.get("parameters") or {})
        )
        cron, zone = schedule_of(current)
        kernel = changed.get("runtime_environment_name", stored.get("kernel"))
        compute = (
            compute_of(changed["compute_type"])
            if "compute_type" in changed
            else Compute(
                pool=current.get("work_pool_name") or Compute().pool,
                cluster=stored.get("cluster"),
            )
        )
        deploy(
            connection,
            notebook=notebook,
            name=current["name"],
            parameters=parameters,
            kernel=None if kernel == NOTEBOOK_KERNEL else kernel,
            compute=compute,
            cron=changed.get("schedule", cron),
            timezone=changed.get("timezone", zone),
            cwd=self.root_dir,
        )

    async def delete_job_definition(self, job_definition_id: str) -> None:
        await self._run(self._delete_job_definition, job_definition_id)

    def _delete_job_definition(self, job_definition_id: str) -> None:
        with self.connection().client() as api:
            try:
                api.request("DELETE", f"/deployments/{job_definition_id}")
            except APIError as error:
                if error.status_code != 404:
                    raise

    async def get_job_definition(self, job_definition_id: str) -> DescribeJobDefinition:
        return await self._run(self._get_job_definition, job_definition_id)

    def _get_job_definition(self, job_definition_id: str) -> DescribeJobDefinition:
        with self.connection().client() as api:
            found = self._get(api, f"/deployments/{job_definition_id}", "job definition")
        return describe_definition(found)

    async def list_job_definitions(
        self, query: ListJobDefinitionsQuery
    ) -> ListJobDefinitionsResponse:
        return await self._run(self._list_job_definitions, query)

    def _list_job_definitions(self, query: ListJobDefinitionsQuery) -> ListJobDefinitionsResponse:
        offset = int(query.next_token or 0)
        criteria = definitions_filter(query)
        with self.connection().client() as api:
            body = {
                **criteria,
                "sort": definitions_sort(query),
                "limit": min(int(query.max_items or PAGE), PAGE),
                "offset": offset,
            }
            found = api.request("POST", "/deployments/filter", json=body, idempotent=True).json()
            total = api.request("POST", "/deployments/count", json=criteria, idempotent=True)
        seen = offset + len(found)
        count = int(total.json())
        return ListJobDefinitionsResponse(
            job_definitions=[describe_definition(d) for d in found],
            total_count=count,
            next_token=str(seen) if seen < count else None,
        )

    async def create_job_from_definition(
        self, job_definition_id: str, model: CreateJobFromDefinition
    ) -> str:
        return await self._run(self._create_job_from_definition, job_definition_id, model)

    def _create_job_from_definition(
        self, job_definition_id: str, model: CreateJobFromDefinition
    ) -> str:
        connection = self.connection()
        with connection.client() as api:
            current = self._get(api, f"/deployments/{job_definition_id}", "job definition")
            stored = current.get("parameters") or {}
            declared = declared_types(current.get("parameter_openapi_schema"))
            parameters = {
                **(stored.get("parameters") or {}),
                **typed_parameters(model.parameters, declared),
            }
            run_id = api.trigger(
                RUN_FLOW,
                current["name"],
                {"parameters": parameters},
                deployment_id=job_definition_id,
                idempotency_key=f"nbjobs-run-{uuid.uuid4()}",
                tags=[f"trigger:{LAB_TRIGGER}"],
            )
        if connection.local is not None and current.get("work_pool_name") in (None, Compute().pool):
            start_now(connection.local, run_id)
        return run_id

    def get_staging_paths(self, model: DescribeJob | DescribeJobDefinition) -> dict[str, str]:
        """Unused: outputs come from the run's store (``files.StoredJobFiles``)."""
        return {}
