"""What ``nbjobs deploy`` and ``nbjobs serve`` do, against the configured Prefect server."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import get_client
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

from notebook_jobs.blocks.exceptions import UnknownParameterError
from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.blocks.settings import settings
from notebook_jobs.blocks.slurm import SlurmCluster
from notebook_jobs.blocks.store import open_store
from notebook_jobs.deployments.definitions import (
    POOL_NAME,
    DeploymentOptions,
    apply_spec,
    content_hash,
    general_spec,
    notebook_spec,
)
from notebook_jobs.deployments.processes import HEALTH_POLL_SECONDS, start_timeout_seconds
from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
from notebook_jobs.tasks.engine.run_context import declared_run_values
from notebook_jobs.tasks.engine.secrets import declared_secrets, secret_reference
from notebook_jobs.tasks.engine.staged import with_declared_secrets
from notebook_jobs.tasks.engine.staging import (
    check_json_value,
    declared_parameters,
    notebook_defaults,
)
from notebook_jobs.tasks.executors import LocalExecutor
from notebook_jobs.tasks.notebook import warm_up_html
from notebook_jobs.tasks.runtime import using_executor


@dataclass
class Deployed:
    """What ``nbjobs deploy`` created or updated."""

    deployment_id: str
    name: str
    version: str
    notebook_uri: str
    parameters: list[dict[str, Any]]


async def deploy_notebook(notebook: str, *, name: str, options: DeploymentOptions) -> Deployed:
    """Store the notebook under its content hash and create or update its deployment.

    Callers of the deployment send the notebook's parameters; every technical
    parameter is fixed to the options' ``store``, ``fixed`` or the flow's default, except
    the names in ``allow`` (``definitions.notebook_spec``).

    Raises:
        NotebookInputError: The notebook cannot be read, or a default is not declared.
        ArtefactStoreError: The notebook could not be uploaded.
    """
    source = fetch_notebook_source(notebook)
    nb = parse_notebook(source)
    declared = declared_parameters(nb)
    defaults = options.defaults
    unknown = [key for key in defaults if key not in {p["name"] for p in declared}]
    if unknown:
        raise UnknownParameterError(unknown, [p["name"] for p in declared])
    for key, value in defaults.items():
        check_json_value(key, value)
    # the notebook's own literal defaults too, so the deployment's Parameters tab, and
    # every run's (scheduled ones included), shows what the notebook runs with
    # a declared secret's default is a Secret block (given, or named in the notebook)
    # or none: never the notebook's literal; a value given for one is refused
    defaults = {**notebook_defaults(nb), **with_declared_secrets(nb, defaults)}
    for secret in declared_secrets(nb):
        if secret_reference(defaults.get(secret)) is None:
            defaults.pop(secret, None)
    for asked in declared_run_values(nb):  # filled in by each run (its logical date...)
        if defaults.get(asked) is None:
            defaults.pop(asked, None)
    digest = content_hash(source.data)
    artefact_store = open_store(options.store)
    key = safe_key("notebooks", digest, source.name)
    await asyncio.to_thread(artefact_store.put_bytes, key, source.data)
    uri = artefact_store.uri(key)
    spec = notebook_spec(
        name=name,
        notebook_uri=uri,
        notebook_name=source.name,
        digest=digest,
        declared=declared,
        options=replace(options, defaults=defaults),
    )
    async with get_client() as client:
        deployment_id = await apply_spec(client, spec, options.pool)
    return Deployed(str(deployment_id), f"run-notebook/{name}", digest, uri, declared)


ZOMBIE_AUTOMATION = "nbjobs: crash unresponsive flow runs"


async def ensure_zombie_automation(client: Any) -> None:
    """Create Prefect's documented "zombie flow runs" automation unless it exists.

    Flow runs emit heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, set by ``nbjobs
    serve``); a run whose heartbeats stop for ``$NBJOBS_ZOMBIE_SECONDS`` (90) without
    reaching a final state (its worker was killed, its machine died) is marked Crashed.
    """
    from datetime import timedelta

    from prefect.automations import AutomationCore
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if await client.read_automations_by_name(ZOMBIE_AUTOMATION):
        return
    within = settings().zombie_seconds
    await client.create_automation(
        AutomationCore(
            name=ZOMBIE_AUTOMATION,
            description="Marks flow runs Crashed when their heartbeats stop.",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={
                    "prefect.flow-run.heartbeat",
                    "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed",
                },
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=within),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    message=f"no heartbeat for {within:g} s: its worker or machine went away",
                )
            ],
        )
    )


async def crash_orphaned_runs(client: Any, pool: str) -> int:
    """Mark the Pending and Running flow runs of ``pool`` Crashed; how many there were."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    orphans = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
            )
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
    )
    for run in orphans:
        await client.set_flow_run_state(
            run.id,
            Crashed(message="the local worker stopped while it ran; Retry runs it again"),
            force=True,
        )
    return len(orphans)


async def _wait_for_api(client: Any) -> None:
    """Wait until the API answers (the local server and its worker start together)."""
    timeout = start_timeout_seconds()
    deadline = asyncio.get_running_loop().time() + timeout
    while await client.api_healthcheck() is not None:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the Prefect API did not answer within {timeout:g} s")
        await asyncio.sleep(HEALTH_POLL_SECONDS)


logger = get_logger("nbjobs.serve")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def adhoc_decision(api_url: str, auth: bool, asked: bool | None) -> tuple[bool, str]:
    """Whether ``nbjobs serve`` registers ``adhoc``, and why, for its log.

    ``adhoc`` runs any notebook it is sent: code execution for whoever can reach the
    API. It is registered when the API is on this machine's loopback, or asks for
    credentials (an auth string or an API key), or when ``--allow-adhoc`` says so;
    ``--no-adhoc`` leaves it out whatever the API.

    Example:
        >>> adhoc_decision("http://10.0.0.5:4200/api", auth=False, asked=None)
        (False, 'the API at http://10.0.0.5:4200/api is not on the loopback and has no auth: ...')
    """
    if asked is not None:
        return asked, "--allow-adhoc" if asked else "--no-adhoc"
    host = urlparse(api_url).hostname or ""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return True, f"the API at {api_url} is on this machine's loopback"
    if auth:
        return True, f"the API at {api_url} asks for credentials"
    return False, (
        f"the API at {api_url} is not on the loopback and has no auth: run-notebook/adhoc "
        "would run any notebook for anyone who reaches it (--allow-adhoc registers it anyway)"
    )


async def remove_adhoc(client: Any, pool: str) -> bool:
    """Delete ``pool``'s ``adhoc`` deployment an earlier ``serve`` left; True if one was there."""
    name = general_spec(pool).name
    try:
        found = await client.read_deployment_by_name(f"run-notebook/{name}")
    except ObjectNotFound:
        return False
    await client.delete_deployment(found.id)
    return True


async def serve(
    pool: str = POOL_NAME,
    limit: int | None = None,
    isolation: str = "in-process",
    poke_socket: Path | None = None,
    kernel_pool: int = 0,
    adhoc: bool | None = None,
    keep_failed_seconds: float = 0.0,
) -> None:
    """Register the general deployment and run a worker for ``pool`` until stopped.

    Notebook deployments made by ``nbjobs deploy`` live in the same pool, so this one
    process runs all of them on a single machine. ``isolation="in-process"`` runs
    notebook flow runs as tasks of the worker (each notebook still gets its own
    kernel process); ``"process"`` gives every flow run a Python subprocess, as
    ``prefect worker start`` does. SIGTERM stops it cleanly: its kernels and the
    fork server are shut down with it.

    Args:
        poke_socket: A Unix socket on which local clients follow the runs they
            created (``deployments.run_channel.RunChannel``); the local server's worker
            has one, and ``nbjobs run`` uses it.
        kernel_pool: Kernels kept started ahead of demand (in-process only). The
            worker's ``LocalExecutor`` owns them and its fork servers, for its life.
        adhoc: Register ``run-notebook/adhoc`` (True), leave it out and remove an
            earlier one (False), or decide from the API's address and auth (None,
            ``adhoc_decision``).
        keep_failed_seconds: How long the kernel of a run that failed in a cell waits
            for its repair (in-process only; a run's ``keep_failed_kernel`` wins).
    """
    from notebook_jobs.deployments.worker import InProcessWorker, SubprocessWorker

    main = asyncio.current_task()
    terminated: list[bool] = []

    def on_sigterm() -> None:
        terminated.append(True)
        if main is not None:
            main.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    async with get_client() as client:
        if poke_socket is not None:
            await _wait_for_api(client)  # the local server may still be starting
        wanted, why = adhoc_decision(
            str(client.api_url),
            bool(PREFECT_API_AUTH_STRING.value() or PREFECT_API_KEY.value()),
            adhoc,
        )
        # the Blocks catalog lists SlurmCluster even on a server in another environment
        try:
            await SlurmCluster.aregister_type_and_schema(client=client)
        except Exception as error:  # a catalog entry is not worth a worker that won't start
            logger.warning("could not register the SlurmCluster block type: %s", error)
        if wanted:
            await apply_spec(client, general_spec(pool), pool)
            logger.info("registered run-notebook/%s: %s", general_spec(pool).name, why)
        else:
            removed = await remove_adhoc(client, pool)
            logger.warning(
                "run-notebook/%s is not served (%s)%s",
                general_spec(pool).name,
                why,
                "; the one an earlier serve registered was removed" if removed else "",
            )
        if poke_socket is None:
            await ensure_zombie_automation(client)
        else:
            # The local server has one worker, this one: whatever it was running when
            # it stopped is orphaned. (Prefect's zombie automation would find the same
            # runs, but on SQLite its bucket writes for every event were measured to
            # lock the database for 60 s at a time.)
            await crash_orphaned_runs(client, pool)
    worker_class = InProcessWorker if isolation == "in-process" else SubprocessWorker
    warming: asyncio.Future[None] | None = None
    # in-process runs share one executor; a subprocess per run makes its own
    executor = (
        LocalExecutor(pool_size=kernel_pool, keep_failed_seconds=keep_failed_seconds)
        if isolation == "in-process"
        else None
    )
    if executor is not None:
        executor.prestart()  # the first request finds its kernel (and the fork server) ready
        warming = asyncio.ensure_future(asyncio.to_thread(warm_up_html))
    listener: asyncio.Server | None = None
    try:
        with using_executor(executor):
            async with worker_class(work_pool_name=pool, limit=limit) as worker:
                if poke_socket is not None and isinstance(worker, InProcessWorker):
                    listener = await worker.listen(poke_socket)
                await worker.start()
    except asyncio.CancelledError:
        if not terminated:  # cancelled by someone else: not ours to swallow
            raise
    finally:
        if warming is not None:
            warming.cancel()
        if listener is not None:
            listener.close()
            poke_socket.unlink(missing_ok=True)  # type: ignore[union-attr]
        if executor is not None:
            await executor.close()  # no pre-started kernel or fork server outlives the worker
