"""``nbjobs endpoints``: a notebook's annotated cells as an HTTP API, run and watched by Prefect.

``deploy`` makes the same endpoints jobs instead: a deployment per annotated cell
(``endpoint/post-echo``), each call a run with its artefacts and ``response.json``.

``serve`` deploys ``serve-endpoints/<name>`` and starts it (a flow run that stays
Running while Kernel Gateway serves); ``stop`` cancels that run (the gateway and its
kernels stop); ``restart`` cancels it and starts a new one, which reads the notebook
again; ``status`` says what runs where. The UI's Run and Cancel buttons on the
deployment do the same as ``restart`` and ``stop``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from notebook_jobs.deployments.exit_codes import EXIT_OK

ACTIVE = ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING")
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 60.0


def add_parser(commands: Any) -> None:
    """``nbjobs endpoints serve|stop|restart|status|deploy``."""
    endpoints = commands.add_parser(
        "endpoints",
        help="serve a notebook's `# METHOD /path` cells as an HTTP API (Kernel Gateway)",
    )
    endpoints.set_defaults(handler=handle)
    actions = endpoints.add_subparsers(dest="action", required=True)
    serve = actions.add_parser("serve", help="deploy the notebook's API and start it")
    serve.add_argument("notebook", help="a notebook path, s3:// URI or URL")
    serve.add_argument("--name", required=True, help="the API's name (its deployment's)")
    serve.add_argument("--port", type=int, default=8890, help="the port to serve on")
    serve.add_argument("--ip", default="127.0.0.1", help="the address to bind")
    auth = serve.add_mutually_exclusive_group(required=True)
    auth.add_argument(
        "--auth-secret", metavar="BLOCK", help="a Prefect Secret block holding the password"
    )
    auth.add_argument("--no-auth", action="store_true", help="serve without auth")
    serve.add_argument("--user", default="nbjobs", help="basic-auth user name")
    serve.add_argument("--prespawn", type=int, metavar="N", help="kernels started ahead")
    serve.add_argument("--allow-origin", help="CORS Access-Control-Allow-Origin")
    serve.add_argument("--base-url", help="a path prefix for every endpoint")
    serve.add_argument("--kernel", help="kernel name (default: the notebook's)")
    for action in ("stop", "restart", "status"):
        actions.add_parser(action, help=f"{action} the API").add_argument(
            "name", help="the API's name, as given to `nbjobs endpoints serve --name`"
        )
    deploy = actions.add_parser(
        "deploy", help="one deployment per endpoint (endpoint/post-echo): each call a tracked run"
    )
    deploy.add_argument("notebook", help="a notebook path, s3:// URI or URL")
    deploy.add_argument("--store", help="where each call's artefacts and response.json go")


def endpoints_command(args: argparse.Namespace) -> int:
    """Run ``nbjobs endpoints ACTION`` (Prefect is configured: the caller saw to it).

    A ``NotebookInputError`` (exit 2) or ``EndpointServerError`` (exit 4) is reported
    by ``cli.main`` in one line.
    """
    print(asyncio.run(_ACTIONS[args.action](args)))
    return EXIT_OK


async def _serve(args: argparse.Namespace) -> str:
    from prefect import get_client

    from notebook_jobs.deployments.definitions import ENDPOINTS_ENTRYPOINT, POOL_NAME, ensure_pool
    from notebook_jobs.flows.serve_endpoints import FLOW_NAME, run_endpoints
    from notebook_jobs.tasks.engine.endpoints import find_endpoints
    from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook

    notebook = _located(args.notebook)
    # refused here, in one line, rather than in a run that fails
    find_endpoints(parse_notebook(fetch_notebook_source(notebook)))
    parameters: dict[str, Any] = {
        "notebook": notebook,
        "port": args.port,
        "ip": args.ip,
        "auth_secret": args.auth_secret,
        "no_auth": bool(args.no_auth),
        "user": args.user,
        "prespawn_count": args.prespawn,
        "allow_origin": args.allow_origin,
        "base_url": args.base_url,
        "kernel": args.kernel,
    }
    async with get_client() as client:
        if args.auth_secret:
            from prefect.blocks.system import Secret

            try:
                await Secret.aload(args.auth_secret, client=client)
            except ValueError as error:
                raise_input(f"no Secret block {args.auth_secret!r}: {error}")
        await ensure_pool(client, POOL_NAME)
        flow_id = await client.create_flow_from_name(FLOW_NAME)
        from prefect.utilities.callables import parameter_schema

        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=args.name,
            parameters=parameters,
            description=f"The endpoints of {notebook}: run to start the API, cancel to stop it",
            tags=["nbjobs", "nbjobs-endpoints"],
            entrypoint=ENDPOINTS_ENTRYPOINT,
            work_pool_name=POOL_NAME,
            pull_steps=[],
            parameter_openapi_schema=parameter_schema(run_endpoints.fn).model_dump_for_openapi(),
            enforce_parameter_schema=True,
        )
        await _cancel_active(client, deployment_id)
        return await _start(client, deployment_id, args.name, parameters)


async def _stop(args: argparse.Namespace) -> str:
    from prefect import get_client

    async with get_client() as client:
        deployment = await _deployment(client, args.name)
        stopped = await _cancel_active(client, deployment.id)
    if not stopped:
        return f"{args.name}: not running"
    return f"{args.name}: stopped (run {', '.join(stopped)} cancelled; the port is closed)"


async def _restart(args: argparse.Namespace) -> str:
    from prefect import get_client

    async with get_client() as client:
        deployment = await _deployment(client, args.name)
        await _cancel_active(client, deployment.id)
        return await _start(client, deployment.id, args.name, deployment.parameters)


async def _status(args: argparse.Namespace) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        deployment = await _deployment(client, args.name)
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    parameters = deployment.parameters
    url = _url(parameters)
    if not runs or runs[0].state is None:
        return f"{args.name}: never started ({url} when it runs)"
    run, state = runs[0], runs[0].state
    if state.type.value == "RUNNING":
        return f"{args.name}: serving at {url} (run {run.id}, {parameters['notebook']})"
    return f"{args.name}: {state.type.value.lower()} (last run {run.id}: {state.message or ''})"


async def _deployment(client: Any, name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    from notebook_jobs.flows.serve_endpoints import FLOW_NAME

    try:
        return await client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
    except ObjectNotFound:
        raise_input(
            f"no API named {name!r}: start one with `nbjobs endpoints serve NOTEBOOK --name {name}`"
        )


async def _cancel_active(client: Any, deployment_id: UUID) -> list[str]:
    """Cancel the deployment's runs that are not over; wait until they are."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Cancelling

    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            state=dict(type=FlowRunFilterStateType(any_=[StateType(s) for s in ACTIVE])),
        )
    )
    for run in runs:
        running = run.state is not None and run.state.type in (
            StateType.RUNNING,
            StateType.CANCELLING,
        )
        state: Any = Cancelling(message="stopped") if running else Cancelled(message="stopped")
        await client.set_flow_run_state(run.id, state, force=True)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for run in runs:
        while time.monotonic() < deadline:
            current = await client.read_flow_run(run.id)
            if current.state is None or current.state.is_final():
                break
            await asyncio.sleep(0.5)
        else:
            from notebook_jobs.blocks.exceptions import EndpointServerError

            raise EndpointServerError(
                f"run {run.id} did not stop within {STOP_TIMEOUT_SECONDS:.0f} s: is its worker "
                "(nbjobs serve) running?"
            )
    return [str(run.id) for run in runs]


async def _start(client: Any, deployment_id: UUID, name: str, parameters: dict[str, Any]) -> str:
    """A new run of the deployment; wait until its gateway listens."""
    from notebook_jobs.blocks.exceptions import EndpointServerError

    run = await client.create_flow_run_from_deployment(deployment_id, tags=["trigger:cli"])
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        current = await client.read_flow_run(run.id)
        if current.state is not None and current.state.is_final():
            raise EndpointServerError(
                f"{name}: the run ended {current.state.type.value}: {current.state.message}"
            )
        running = current.state is not None and current.state.type.value == "RUNNING"
        if running and _listening(parameters["ip"], parameters["port"]):
            return f"{name}: serving at {_url(parameters)} (run {run.id})"
        await asyncio.sleep(0.3)
    raise EndpointServerError(
        f"{name}: not serving after {START_TIMEOUT_SECONDS:.0f} s (run {run.id}); is a worker "
        "(nbjobs serve, or the local server's) running for the notebook-jobs pool?"
    )


def _listening(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def _url(parameters: dict[str, Any]) -> str:
    base = (parameters.get("base_url") or "").rstrip("/")
    return f"http://{parameters['ip']}:{parameters['port']}{base}"


def raise_input(message: str) -> Any:
    from notebook_jobs.blocks.exceptions import NotebookInputError

    raise NotebookInputError(message)


async def _deploy(args: argparse.Namespace) -> str:
    from prefect import get_client

    from notebook_jobs.deployments.definitions import (
        ENDPOINT_JOB_ENTRYPOINT,
        POOL_NAME,
        ensure_pool,
    )
    from notebook_jobs.flows.run_endpoint import FLOW_NAME, run_endpoint
    from notebook_jobs.tasks.engine.endpoints import find_endpoints
    from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook

    notebook = _located(args.notebook)
    endpoints = find_endpoints(parse_notebook(fetch_notebook_source(notebook)))
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(run_endpoint.fn).model_dump_for_openapi()
    lines = []
    async with get_client() as client:
        await ensure_pool(client, POOL_NAME)
        flow_id = await client.create_flow_from_name(FLOW_NAME)
        for endpoint in endpoints:
            await client.create_deployment(
                flow_id=flow_id,
                name=endpoint.slug,
                parameters={"notebook": notebook, "endpoint": endpoint.route, "store": args.store},
                description=f"{endpoint.route} of {notebook}, as a job: send `request` "
                "(body, args, path, headers, as Kernel Gateway's REQUEST)",
                tags=["nbjobs", "nbjobs-endpoint"],
                entrypoint=ENDPOINT_JOB_ENTRYPOINT,
                work_pool_name=POOL_NAME,
                pull_steps=[],
                parameter_openapi_schema=schema,
                enforce_parameter_schema=True,
            )
            lines.append(f"  {FLOW_NAME}/{endpoint.slug}  {endpoint.route}")
    return f"deployed {len(endpoints)} endpoints of {notebook} as jobs:\n" + "\n".join(lines)


def _located(notebook: str) -> str:
    """A notebook argument as workers find it: URIs as given, paths made absolute."""
    return notebook if "://" in notebook else str(Path(notebook).expanduser().resolve())


_ACTIONS = {
    "serve": _serve,
    "stop": _stop,
    "restart": _restart,
    "status": _status,
    "deploy": _deploy,
}


def handle(args: argparse.Namespace) -> int:
    """``nbjobs endpoints``, on the local server when no Prefect server is configured."""
    from notebook_jobs.deployments.cli.common import use_local_server

    use_local_server()
    return endpoints_command(args)
