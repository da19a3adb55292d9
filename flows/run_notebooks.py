"""The ``run-notebooks`` flow: many notebook runs, each with its own artefacts and result.

Give it a list of requests, or one notebook and a parameter grid (every combination
of the listed values). Each item is a ``run-notebook`` subflow run: its own flow run
id, artefacts, artifacts and result; a failing item does not stop the others.

Two ways to spread the work:

- ``executor="local"`` (default): the subflows run concurrently in this process, at
  most ``max_concurrency`` at a time, through a ``LocalExecutor`` of the batch's own
  with a pool of pre-started kernels sized to match (each kernel still serves one
  run; the fork servers are the worker's, when the batch runs in one). The kernels
  are separate processes, so one Python process drives both cores.
- ``executor="dask"``: each item is a task on prefect-dask's ``DaskTaskRunner``
  (a ``LocalCluster`` of ``max_concurrency`` workers, or an existing cluster given by
  ``dask_address``), for when one machine is not enough.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Literal

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL
from pydantic import BaseModel, Field

from notebook_jobs.blocks.exceptions import BatchError, NotebookInputError
from notebook_jobs.tasks.executors import LocalExecutor
from notebook_jobs.tasks.history import publish_history
from notebook_jobs.tasks.models import NotebookRequest
from notebook_jobs.tasks.notebook import artifact_key
from notebook_jobs.tasks.publish import BatchTable
from notebook_jobs.tasks.runtime import current_executor, using_executor

BATCH_FLOW_NAME = "run-notebooks"


class BatchItem(BaseModel):
    """How one item of a batch ended."""

    index: int
    parameters: dict[str, Any]
    flow_run_id: str | None = None
    status: str
    success: bool
    error: str | None = None
    result: dict[str, Any] | None = Field(default=None, description="The item's result.json.")


class BatchResult(BaseModel):
    """The batch: counts and every item's outcome."""

    total: int
    succeeded: int
    failed: int
    items: list[BatchItem]


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order.

    Example:
        >>> expand_grid({"n": [1, 2], "label": ["a"]})
        [{'n': 1, 'label': 'a'}, {'n': 2, 'label': 'a'}]
    """
    if not grid:
        return [{}]
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def batch_requests(
    requests: list[NotebookRequest] | None,
    notebook: str | dict[str, Any] | None,
    grid: dict[str, list[Any]] | None,
    parameters: dict[str, Any] | None,
    store: str | None,
) -> list[NotebookRequest]:
    """The batch's requests: the given ones, or the notebook over the grid."""
    if requests:
        return [
            r if r.store or not store else r.model_copy(update={"store": store}) for r in requests
        ]
    if notebook is None:
        raise NotebookInputError("run-notebooks needs requests, or a notebook (and a grid)")
    return [
        NotebookRequest(notebook=notebook, parameters={**(parameters or {}), **point}, store=store)
        for point in expand_grid(grid or {})
    ]


async def _run_item(index: int, request: NotebookRequest) -> BatchItem:
    from notebook_jobs.flows.run_labels import notebook_label
    from notebook_jobs.flows.run_notebook import flow_arguments, run_notebook, run_outcome

    # tagged when created, so the run needs no extra API call to tag itself
    with tags(f"notebook:{notebook_label(request.notebook, request.name)}", "trigger:batch"):
        state = await run_notebook(**flow_arguments(request), return_state=True)
    outcome = await run_outcome(state, request.store)
    if isinstance(outcome, BaseException):
        document = getattr(outcome, "result", None)
        return BatchItem(
            index=index,
            parameters=request.parameters,
            flow_run_id=(document or {}).get("flow_run_id"),
            status=(document or {}).get("status", "refused"),
            success=False,
            error=f"{type(outcome).__name__}: {outcome}",
            result=document,
        )
    document = outcome.model_dump(mode="json")
    return BatchItem(
        index=index,
        parameters=request.parameters,
        flow_run_id=document["flow_run_id"],
        status=document["status"],
        success=document["success"],
        result=document,
    )


@task(name="run-batch-item", cache_policy=NO_CACHE)
async def run_batch_item(index: int, request: NotebookRequest) -> BatchItem:
    """One batch item as a task (for distributed task runners such as Dask)."""
    return await _run_item(index, request)


async def _name_batch(labels: list[str], count: int, grid: dict[str, list[Any]] | None) -> None:
    """Name and tag the batch's flow run by its notebooks: ``batch report over n (3),
    label (2) · 9c3f2a`` (or ``batch of 12: report, sales · ...``), tagged
    ``notebook:<each>``."""
    from notebook_jobs.flows.run_labels import COMMON_TAG, ID_CHARS, MAX_NAME_CHARS, name_this_run

    run_id = flow_run.get_id()
    if not run_id:
        return
    if grid and len(labels) == 1:
        what = f"batch {labels[0]} over " + ", ".join(f"{k} ({len(v)})" for k, v in grid.items())
    else:
        what = f"batch of {count}: {', '.join(labels)}"
    if len(what) > MAX_NAME_CHARS:
        what = what[: MAX_NAME_CHARS - 1] + "…"
    await name_this_run(
        f"{what} · {run_id[-ID_CHARS:]}",
        [COMMON_TAG, "trigger:batch", *(f"notebook:{label}" for label in labels[:10])],
    )


@flow(name=BATCH_FLOW_NAME, log_prints=True)
async def run_notebooks(
    requests: list[NotebookRequest] | None = None,
    notebook: str | dict[str, Any] | None = None,
    grid: dict[str, list[Any]] | None = None,
    parameters: dict[str, Any] | None = None,
    store: str | None = None,
    max_concurrency: int = 2,
    kernel_pool: bool = True,
    executor: Literal["local", "dask"] = "local",
    dask_address: str | None = None,
) -> BatchResult:
    """Run many notebooks, or one notebook over a parameter grid; each its own run.

    Args:
        requests: Runs to make, each a full ``run-notebook`` request.
        notebook: One notebook to run over ``grid`` (instead of ``requests``).
        grid: Parameter name -> values; every combination is one run.
        parameters: Parameters common to every point of the grid.
        store: Artefact store for items that name none.
        max_concurrency: Most runs at the same time (local), or Dask workers.
        kernel_pool: Pre-start kernels so runs never wait for one (local only).
        executor: ``"local"`` or ``"dask"`` (see the module docstring).
        dask_address: An existing Dask scheduler to use instead of a LocalCluster.

    Returns:
        Counts and every item's outcome; the batch fails when any item failed.

    Example:
        >>> await run_notebooks(notebook="examples/report.ipynb", grid={"n": [1, 2, 3]})
        BatchResult(total=3, succeeded=3, failed=0, ...)
    """
    logger = get_run_logger()
    items = batch_requests(requests, notebook, grid, parameters, store)
    limit = max(max_concurrency, 1)
    logger.info("running %d notebooks, %d at a time (%s)", len(items), limit, executor)
    from notebook_jobs.flows.run_labels import notebook_label

    labels = sorted({notebook_label(r.notebook, r.name) for r in items})
    try:
        await _name_batch(labels, len(items), grid)
    except Exception as error:  # a name is not worth a failed batch
        logger.warning("could not name and tag the batch's flow run: %s", error)
    table = BatchTable(
        artifact_key(labels[0] if len(labels) == 1 else "batch", "batch"),
        items,
        PREFECT_UI_URL.value(),
    )
    await table.publish(final=True)  # every item, pending

    async def finished(item: BatchItem) -> BatchItem:
        table.record(item)
        await table.publish()
        return item

    if executor == "dask":
        from prefect_dask.task_runners import DaskTaskRunner

        runner = (
            DaskTaskRunner(address=dask_address)
            if dask_address
            else DaskTaskRunner(cluster_kwargs={"n_workers": limit, "threads_per_worker": 1})
        )
        with runner:
            futures = [
                runner.submit(run_batch_item, parameters={"index": i, "request": r})
                for i, r in enumerate(items)
            ]

            async def waited(future: Any) -> BatchItem:
                # a future's result() blocks: waited for in a thread, not on the event loop
                return await finished(await asyncio.to_thread(future.result))

            outcomes = list(await asyncio.gather(*(waited(future) for future in futures)))
    else:
        parent = current_executor()
        gate = asyncio.Semaphore(limit)

        async def gated(index: int, request: NotebookRequest) -> BatchItem:
            async with gate:
                return await finished(await _run_item(index, request))

        async with LocalExecutor(
            pool_size=limit if kernel_pool else 0,
            fork_servers=parent.fork_servers if parent else None,
        ) as batch_executor:
            with using_executor(batch_executor):
                outcomes = await asyncio.gather(*(gated(i, r) for i, r in enumerate(items)))
    await table.publish(final=True)
    # items that ended together each published a history without the others (their
    # states were not final yet): once more, now that every item's is
    defaults = {  # the notebook's defaults, as far as the items' results show them
        name: value
        for outcome in outcomes
        for name, value in ((outcome.result or {}).get("parameters_used") or {}).items()
        if ((outcome.result or {}).get("parameters_from") or {}).get(name) == "notebook"
    }
    for label in labels[:10]:
        try:
            await publish_history(label, None, defaults)
        except Exception as error:  # the history is not worth a failed batch
            logger.warning("could not publish the history of %s: %s", label, error)
    batch = BatchResult(
        total=len(outcomes),
        succeeded=sum(1 for o in outcomes if o.success),
        failed=sum(1 for o in outcomes if not o.success),
        items=sorted(outcomes, key=lambda o: o.index),
    )
    logger.info("%d of %d notebooks succeeded", batch.succeeded, batch.total)
    if batch.failed:
        raise BatchError(
            f"{batch.failed} of {batch.total} notebooks failed: "
            + "; ".join(f"#{o.index} {o.error}" for o in batch.items if not o.success)[:2000],
            batch=batch.model_dump(mode="json"),
        )
    return batch
