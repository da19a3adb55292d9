"""The job definition half of the scheduler: notebook deployments, made and edited by
``nbjobs deploy``, paused and deleted through Prefect's API."""

from __future__ import annotations

import uuid
from typing import Any

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.models import (
    CreateJobDefinition,
    CreateJobFromDefinition,
    DescribeJobDefinition,
    ListJobDefinitionsQuery,
    ListJobDefinitionsResponse,
    UpdateJobDefinition,
)

from notebook_jobs.blocks.exceptions import APIError
from notebook_jobs.deployments.lab.compute import Compute, compute_of
from notebook_jobs.deployments.lab.connection import Connection
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
    typed_parameters,
)
from notebook_jobs.deployments.lab.plumbing import PAGE, SchedulerPlumbing, start_now

_SCHEMA_TYPES = {
    "integer": "int",
    "number": "float",
    "string": "str",
    "boolean": "bool",
    "array": "list",
    "object": "dict",
}


def declared_types(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A notebook deployment's parameters, typed as its schema types them."""
    properties = (((schema or {}).get("properties") or {}).get("parameters") or {}).get(
        "properties"
    ) or {}
    return [
        {"name": name, "type": _SCHEMA_TYPES.get(str(spec.get("type")))}
        for name, spec in properties.items()
    ]


class DefinitionMethods(SchedulerPlumbing):
    """``BaseScheduler``'s job definition methods, on notebook deployments."""

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
