"""``run_notebook`` for Python callers: a result, not a coroutine, on any Prefect server.

``flows.run_notebook.run_notebook`` is an async Prefect flow: ``await`` it in async
code (a Jupyter cell can ``await`` at top level). ``run_notebook_sync`` is for
everything else, a script or a function that is not async, and works in Jupyter too.
With no Prefect server configured it uses the local server, as ``nbjobs run`` does,
so the run lands in the same history and UI; the notebook itself runs in a kernel
started by this process, not in the local worker.

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
from typing import TYPE_CHECKING, Any

from notebook_jobs.deployments.local_server import LocalServer
from notebook_jobs.deployments.local_state import configured_api_url

if TYPE_CHECKING:
    from notebook_jobs.tasks.models import NotebookResult


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
        LocalServerError: No server is configured and the local one cannot start.
    """
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from notebook_jobs.flows.run_notebook import run_notebook

    settings: Any = contextlib.nullcontext()
    if configured_api_url() is None:
        server = LocalServer()
        api_url = server.ensure()
        settings = temporary_settings(
            updates={PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: server.auth_string()}
        )

    def run() -> NotebookResult:
        with settings:
            result: NotebookResult = asyncio.run(run_notebook(notebook, **options))
            return result

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    # called from a running event loop (a Jupyter cell): run on a thread of its own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()
