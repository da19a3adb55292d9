"""``run_notebook`` for Python callers: a result, on any Prefect server, as fast as the CLI.

``flows.run_notebook.run_notebook`` is an async Prefect flow: ``await`` it in async
code and the notebook runs in this process (a kernel forked from this process's own
fork server, ``tasks.executors.process_executor``); inside another flow it is a
subflow. ``run_notebook_sync`` (for a script, a function that is not async, or
Jupyter) and ``run_notebook_async`` (for async code) return the same result, and with
no Prefect server configured hand the run to the local server's worker, as ``nbjobs
run`` does: its kernels are started ahead, and the run lands in the same history and
UI. The kernel gets this process's environment on top of the worker's, as papermill's
gets its caller's. With a server configured they run the flow in this process.

Example:
    >>> from notebook_jobs.deployments.python_api import run_notebook_sync
    >>> result = run_notebook_sync("examples/report.ipynb", parameters={"n": 5})
    >>> result.outputs["total"]
    55
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from notebook_jobs.blocks import exceptions
from notebook_jobs.blocks.settings import absolute_store
from notebook_jobs.deployments.local_server import LocalServer
from notebook_jobs.deployments.local_state import configured_api_url

if TYPE_CHECKING:
    from notebook_jobs.tasks.models import NotebookResult

TRIGGER = "python"  # the run's tag: trigger:python


def run_notebook_sync(notebook: str | dict[str, Any], **options: Any) -> NotebookResult:
    """Run ``notebook`` as a ``run-notebook`` flow run and return its ``NotebookResult``.

    Args:
        notebook: As for ``run_notebook``: a path, an ``s3://`` or ``http(s)://`` URI,
            or the notebook's JSON.
        **options: The other parameters of ``run_notebook`` (``parameters``,
            ``kernel``, ``cells``, ``timeout_seconds``, ``store``...).

    Returns:
        The result (``tasks.models.NotebookResult``).

    Raises:
        NotebookInputError: The request was refused before any kernel started.
        NotebookRunError: The notebook failed; ``.result`` holds the stored result.
        ArtefactStoreError: The store failed; ``.result`` holds the result, whose
            artefacts are in the spill folder.
        LocalServerError: No server is configured and the local one cannot start.
    """
    if configured_api_url() is None:
        return _in_local_worker(notebook, options)

    from notebook_jobs.flows.run_notebook import run_notebook

    def run() -> NotebookResult:
        result: NotebookResult = asyncio.run(run_notebook(notebook, **options))
        return result

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    # called from a running event loop (a Jupyter cell): run on a thread of its own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


async def run_notebook_async(notebook: str | dict[str, Any], **options: Any) -> NotebookResult:
    """``run_notebook_sync`` for async code: ``await run_notebook_async(...)``.

    Same arguments, result and errors. With no Prefect server configured the run is
    handed to the local worker (this coroutine waits on a thread); else the flow runs
    in this process.
    """
    if configured_api_url() is None:
        return await asyncio.to_thread(_in_local_worker, notebook, options)
    from notebook_jobs.flows.run_notebook import run_notebook

    result: NotebookResult = await run_notebook(notebook, **options)
    return result


def _in_local_worker(notebook: str | dict[str, Any], options: dict[str, Any]) -> NotebookResult:
    """The run, made by the local server's worker; its result, or its error raised."""
    from notebook_jobs.deployments.client_run import run_handed_over
    from notebook_jobs.deployments.report import refusal
    from notebook_jobs.tasks.models import NotebookResult, error_for_result

    request = worker_request(notebook, options)
    server = LocalServer()
    server.ensure()
    final = run_handed_over(server, request, TRIGGER)
    failure = final.get("error") or {}
    document = final.get("document")
    if failure.get("name") == "ArtefactStoreError":
        raise exceptions.ArtefactStoreError(failure.get("message", ""), result=document)
    if document is not None:
        result = NotebookResult.model_validate(document)
        if result.success:
            return result
        raise error_for_result(result)
    name, message = (
        (failure["name"], failure["message"])
        if failure
        else refusal(final.get("message") or final.get("state") or "the run ended unseen")
    )
    raise error_named(name, message)


def worker_request(notebook: str | dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The flow run's parameters, every local path made absolute: the worker runs on
    this machine, but in a folder of its own.

    Raises:
        NotebookNotFoundError: A local notebook that does not exist (as the flow says).
    """
    from notebook_jobs.deployments.client_run import local_files, local_notebook, parameter_order

    request: dict[str, Any] = {
        **options,
        "notebook": local_notebook(notebook) if isinstance(notebook, str) else notebook,
        "input_files": local_files(options.get("input_files") or []),
    }
    if request.get("store"):
        request["store"] = absolute_store(str(request["store"]))
    if request.get("cwd"):
        request["cwd"] = str(Path(request["cwd"]).expanduser().resolve())
    if not request.get("parameter_order"):
        request["parameter_order"] = parameter_order(request.get("parameters") or {})
    return {key: value for key, value in request.items() if value is not None}


def error_named(name: str, message: str) -> Exception:
    """The error of ``blocks.exceptions`` called ``name``, with ``message`` (its other
    attributes are the flow's, which did not travel); another name is a
    ``NotebookJobError`` that says it."""
    found = getattr(exceptions, name, None)
    if isinstance(found, type) and issubclass(found, exceptions.NotebookJobError):
        with contextlib.suppress(TypeError):
            return found(message)
        return exceptions._rebuild(found, (message,), {})
    return exceptions.NotebookJobError(f"{name}: {message}")
