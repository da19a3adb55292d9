"""What ``nbjobs deploy`` and ``nbjobs serve`` do, against the configured Prefect server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from prefect import get_client

from blocks.exceptions import UnknownParameterError
from blocks.store import open_store, safe_key
from deployments.definitions import (
    POOL_NAME,
    apply_spec,
    content_hash,
    general_spec,
    notebook_spec,
)
from tasks.staging import (
    check_json_value,
    declared_parameters,
    fetch_notebook_source,
    parse_notebook,
)


@dataclass
class Deployed:
    """What ``nbjobs deploy`` created or updated."""

    deployment_id: str
    name: str
    version: str
    notebook_uri: str
    parameters: list[dict[str, Any]]


async def deploy_notebook(
    notebook: str,
    *,
    name: str,
    defaults: dict[str, Any] | None = None,
    store: str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    pool: str = POOL_NAME,
    concurrency_limit: int | None = None,
) -> Deployed:
    """Store the notebook under its content hash and create or update its deployment.

    Raises:
        NotebookInputError: The notebook cannot be read, or a default is not declared.
        ArtefactStoreError: The notebook could not be uploaded.
    """
    source = fetch_notebook_source(notebook)
    nb = parse_notebook(source)
    declared = declared_parameters(nb)
    defaults = defaults or {}
    unknown = [key for key in defaults if key not in {p["name"] for p in declared}]
    if unknown:
        raise UnknownParameterError(unknown, [p["name"] for p in declared])
    for key, value in defaults.items():
        check_json_value(key, value)
    digest = content_hash(source.data)
    artefact_store = open_store(store)
    key = safe_key("notebooks", digest, source.name)
    await asyncio.to_thread(artefact_store.put_bytes, key, source.data)
    uri = artefact_store.uri(key)
    spec = notebook_spec(
        name=name,
        notebook_uri=uri,
        notebook_name=source.name,
        digest=digest,
        declared=declared,
        defaults=defaults,
        store=store,
        cron=cron,
        timezone=timezone,
        concurrency_limit=concurrency_limit,
    )
    async with get_client() as client:
        deployment_id = await apply_spec(client, spec, pool)
    return Deployed(str(deployment_id), f"run-notebook/{name}", digest, uri, declared)


async def serve(
    pool: str = POOL_NAME, limit: int | None = None, isolation: str = "in-process"
) -> None:
    """Register the general deployment and run a worker for ``pool`` until stopped.

    Notebook deployments made by ``nbjobs deploy`` live in the same pool, so this one
    process runs all of them on a single machine. ``isolation="in-process"`` runs
    notebook flow runs as tasks of the worker (each notebook still gets its own
    kernel process); ``"process"`` gives every flow run a Python subprocess, as
    ``prefect worker start`` does.
    """
    from prefect.workers.process import ProcessWorker

    from deployments.worker import InProcessWorker

    async with get_client() as client:
        await apply_spec(client, general_spec(), pool)
    worker_class = InProcessWorker if isolation == "in-process" else ProcessWorker
    async with worker_class(work_pool_name=pool, limit=limit) as worker:
        await worker.start()
