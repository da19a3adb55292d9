"""The job definition half of the scheduler: notebook deployments, made and edited by
``nbjobs deploy``, paused and deleted through Prefect's API."""

from __future__ import annotations

import uuid
from pathlib import Path
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
from notebook_jobs.deployments.api import API_PAGE_SIZE
from notebook_jobs.deployments.lab.compute import Compute, compute_of
from notebook_jobs.deployments.lab.connection import Connection
from notebook_jobs.deployments.lab.job_definitions import (
    definitions_filter,
    definitions_sort,
    deploy,
    describe_definition,
    interval_of,
    notebook_path,
    schedule_of,
)
from notebook_jobs.deployments.lab.jobs import LAB_TRIGGER, NOTEBOOK_KERNEL, typed_parameters
from notebook_jobs.deployments.lab.plumbing import (
    SchedulerPlumbing,
    offset_of,
    start_now,
)
from notebook_jobs.deployments.names import JSON_TYPES
from notebook_jobs.deployments.papermill_cli import refuse_local_plain_secrets
from notebook_jobs.tasks.names import (
    ALLOW_TAG,
    CATCH_UP_TAG,
    NOTEBOOK_LABEL_TAG,
    OVERLAP_TAG,
    RUN_FLOW,
)

EDITABLE = (
    "schedule",
    "timezone",
    "parameters",
    "runtime_environment_name",
    "compute_type",
    "input_uri",
    "name",
)
# JSON schema types back to parameters cell types (array: a list, never a tuple)
_SCHEMA_TYPES = {json: name for name, json in JSON_TYPES.items() if name != "tuple"}


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
        if taken is not None and f"{NOTEBOOK_LABEL_TAG}{path.stem}" not in (
            taken.get("tags") or []
        ):
            raise SchedulerError(
                f"the job definition {name!r} runs another notebook; choose another name"
            )
        kernel = model.runtime_environment_name
        parameters = typed_parameters(model.parameters, self._declared(str(path)))
        refuse_local_plain_secrets(str(path), parameters)  # before any deployment keeps it
        return deploy(
            connection,
            notebook=str(path),
            name=name,
            parameters=parameters,
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
            # the Edit form sends the definition's file name back as input_uri: only
            # another path is another notebook
            shown_values = {**shown.dict(), "input_uri": shown.input_filename}
            changed = {
                key: value
                for key, value in given.items()
                if key in EDITABLE and value is not None and value != shown_values.get(key)
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
        """``nbjobs deploy`` again with what changed, the rest as deployed.

        Raises:
            SchedulerError: The deployment has settings the dialog cannot carry over.
        """
        kept_elsewhere = [
            tag
            for tag in current.get("tags") or []
            if tag.startswith((ALLOW_TAG, OVERLAP_TAG, CATCH_UP_TAG))
        ]
        stored = current.get("parameters") or {}
        kept_elsewhere += [key for key in ("cache",) if stored.get(key)]
        if current.get("concurrency_limit") or current.get("global_concurrency_limit"):
            kept_elsewhere.append("a concurrency limit")
        if kept_elsewhere:
            raise SchedulerError(
                f"{current['name']} has settings this form cannot keep "
                f"({', '.join(kept_elsewhere)}); change it with nbjobs deploy"
            )
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
        refuse_local_plain_secrets(notebook, parameters)
        cron, zone = schedule_of(current)
        every = interval_of(current) if "schedule" not in changed else None
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
            every=every,
            timezone=changed.get("timezone", zone),
            store=stored.get("store"),
            memory_limit=stored.get("memory_limit"),
            cwd=str(Path(notebook).parent) if Path(notebook).is_absolute() else self.root_dir,
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
            # Prefect deletes the deployment's scheduled runs with it, but its scheduler
            # service, mid-pass as the deployment went, can still insert a few (CI saw
            # three): they would wait for a deployment that is gone
            later: dict[str, Any] = {
                "deployment_id": {"any_": [job_definition_id]},
                "state": {"type": {"any_": ["SCHEDULED"]}},
            }
            for run in api.flow_runs({"flow_runs": later}):
                try:
                    api.request("DELETE", f"/flow_runs/{run['id']}")
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
        offset = offset_of(query.next_token)
        criteria = definitions_filter(query)
        with self.connection().client() as api:
            body = {
                **criteria,
                "sort": definitions_sort(query),
                "limit": min(int(query.max_items or API_PAGE_SIZE), API_PAGE_SIZE),
                "offset": offset,
            }
            found = api.request("POST", "/deployments/filter", json=body, idempotent=True).json()
            counted = api.request("POST", "/deployments/count", json=criteria, idempotent=True)
        seen = offset + len(found)
        count = int(counted.json())
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
