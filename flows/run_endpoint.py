"""The ``endpoint`` flow: one call of a notebook endpoint as a tracked job.

``nbjobs endpoints deploy NOTEBOOK`` makes a deployment per annotated cell
(``endpoint/post-handle_event``); each run takes ``request``, shaped as Kernel
Gateway's ``REQUEST``, and runs the notebook's setup cells, ``REQUEST``, that cell
and its ResponseInfo cell in a fresh kernel, as a ``run-notebook`` subflow (with
its artefacts, retries and summary). The printed response, with the ResponseInfo
status and headers, is the run's result and ``response.json`` beside the executed
notebook; a cell that raises gives status 500 with the error, as the gateway does,
and the run ends Failed with the partial notebook stored.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.runtime import flow_run

from notebook_jobs.blocks.exceptions import FixedParameterError, NotebookRunError
from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.blocks.store import open_store
from notebook_jobs.flows.deployment_rules import run_deployment
from notebook_jobs.tasks.engine.endpoints import endpoint_notebook, find_endpoint
from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
from notebook_jobs.tasks.models import SUMMARY_LINK

FLOW_NAME = "endpoint"
RESPONSE_NAME = "response.json"
MAX_BODY_SHOWN = 3000


def _run_name() -> str:
    given = flow_run.get_parameters()
    return f"{given.get('endpoint', 'endpoint')} · {(flow_run.get_id() or '')[-6:]}"


@flow(name=FLOW_NAME, flow_run_name=_run_name, log_prints=True)
async def run_endpoint(
    notebook: str,
    endpoint: str,
    request: dict[str, Any] | None = None,
    store: str | None = None,
    kernel: str | None = None,
    timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """Call ``endpoint`` of ``notebook`` with ``request``, in a fresh kernel, as a job.

    Args:
        notebook: A path, ``s3://`` URI or URL of a notebook with annotated cells.
        endpoint: ``METHOD /path`` as annotated (or its slug, ``post-handle_event``).
        request: Kernel Gateway's ``REQUEST``: ``body``, ``args`` (lists of strings),
            ``path`` (path parameters) and ``headers``; missing keys are empty.
        store: Where the artefacts and ``response.json`` go (as ``run-notebook``'s).
        kernel: The kernel instead of the notebook's own.
        timeout_seconds: Limit for the whole execution.

    Returns:
        ``{"status", "headers", "body", "flow_run_id", "response"}``: the response as
        the gateway would send it, the notebook run, and where ``response.json`` is.
    """
    from notebook_jobs.flows.run_notebook import FLOW_NAME as RUN_FLOW
    from notebook_jobs.flows.run_notebook import run_notebook, run_outcome
    from notebook_jobs.tasks.engine.endpoints import response_of
    from notebook_jobs.tasks.engine.layout import run_prefix

    logger = get_run_logger()
    deployment = await run_deployment()
    if deployment is not None:  # the deployment's notebook and endpoint, not a caller's
        fixed = deployment.parameters or {}
        for name, value in (("notebook", notebook), ("endpoint", endpoint)):
            if name in fixed and fixed[name] != value:
                raise FixedParameterError(name, deployment.name)
    source = await asyncio.to_thread(fetch_notebook_source, notebook)
    parsed = await asyncio.to_thread(parse_notebook, source)
    chosen = find_endpoint(parsed, endpoint)
    job = endpoint_notebook(parsed, chosen, request or {})
    stem = source.name.removesuffix(".ipynb")
    state = await run_notebook(
        notebook=json.loads(json.dumps(job)),
        name=f"{stem}-{chosen.slug}",
        store=store,
        kernel=kernel,
        timeout_seconds=timeout_seconds,
        return_state=True,
    )
    outcome = await run_outcome(state, store)
    failed = isinstance(outcome, BaseException)
    document = getattr(outcome, "result", None) if failed else outcome.model_dump(mode="json")
    document = document or {}
    executed_uri = (document.get("artefacts") or {}).get("notebook")
    if failed and isinstance(outcome, NotebookRunError):
        error = document.get("error") or {}
        name, message = error.get("name", type(outcome).__name__), error.get("message", "")
        response: dict[str, Any] = {
            "status": 500,  # and the body the gateway gives a cell that raised
            "headers": {"Content-Type": "text/plain"},
            "body": f"Error {name}: {message} \n",
        }
    elif failed:
        raise outcome  # refused before any kernel ran: the request is at fault
    else:
        executed = await asyncio.to_thread(_read_executed, store, document)
        response = response_of(executed)
    run_id = document.get("flow_run_id") or str(state.state_details.flow_run_id)
    artefact_store = await asyncio.to_thread(open_store, store)
    key = safe_key(run_prefix(RUN_FLOW, run_id), RESPONSE_NAME)
    stored = await asyncio.to_thread(
        artefact_store.put_bytes, key, json.dumps(response, indent=2).encode()
    )
    link = await asyncio.to_thread(artefact_store.link, key)
    result = {**response, "flow_run_id": run_id, "response": stored, "notebook": executed_uri}
    logger.info("%s -> %s (%d bytes)", chosen.route, response["status"], len(response["body"]))
    await acreate_markdown_artifact(
        _summary(chosen.route, response, link, document),
        key=f"{chosen.slug}-response"[:100],
        description=f"{chosen.route}: the response",
    )
    if failed:
        raise outcome
    return result


def _read_executed(store: str | None, document: dict[str, Any]) -> Any:
    import nbformat

    from notebook_jobs.tasks.engine.layout import EXECUTED_NAME

    prefix = document["artefacts"]["prefix"]
    artefact_store = open_store(store)
    relative = prefix.removeprefix(artefact_store.root).strip("/")
    data = artefact_store.get_bytes(safe_key(relative, EXECUTED_NAME))
    return nbformat.reads(data.decode(), as_version=4)


def _summary(route: str, response: dict[str, Any], link: str, document: dict[str, Any]) -> str:
    links = (document.get("artefacts") or {}).get("links") or {}
    body = response["body"]
    shown = body if len(body) <= MAX_BODY_SHOWN else body[:MAX_BODY_SHOWN] + "\n… (cut)"
    lines = [
        f"# {route}: {response['status']}",
        "",
        SUMMARY_LINK.format(kind="response", url=link) + " response.json: status, headers, body",
    ]
    for kind in ("html", "notebook", "result"):
        if links.get(kind):
            lines.append(SUMMARY_LINK.format(kind=kind, url=links[kind]))
    lines += ["", "| header | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in response["headers"].items()]
    lines += ["", "```", shown, "```"]
    return "\n".join(lines)
