"""A repair: a new run that continues a failed one from its failing cell.

``run-notebook`` with ``repair_of`` (``nbjobs repair RUN``, the UI's Run with that
parameter, an HTTP call): the failed run's notebook (the stored input, unless a fixed
one is given), parameters (with those given on top) and options (kernel, store, cells,
limits...), gone on with from its failing cell or ``from_cell``. A cold repair runs the
cells before it again first (each marked ``re_executed``), then the rest; the repaired
run links the failed one (``repaired_from``, a ``repair-of:`` tag, its summary), and the
failed run gets a link to its repair.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import ArtifactCreate

from notebook_jobs.blocks.exceptions import NotebookInputError, NotebookNotFoundError
from notebook_jobs.flows.run_diff import result_of_run
from notebook_jobs.tasks.ui_links import run_url

# what a repair never takes from the failed run: the repair's own, and what it recomputes
NOT_CARRIED = frozenset({"repair_of", "from_cell", "parameters", "parameter_order"})


async def repair_arguments(
    of_run: str,
    from_cell: int | None,
    given: dict[str, Any],
    parameters: dict[str, Any],
    defaults: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The failed run's arguments with what the repair sets on top.

    Args:
        of_run: The failed run's flow run id.
        from_cell: The cell to go on from; default: the one that failed.
        given: The repair's own arguments (the flow's, but ``parameters``).
        parameters: The repair's notebook parameters, set over the failed run's.
        defaults: The flow's defaults: an argument left at its default is the failed
            run's.

    Returns:
        The arguments, the notebook parameters, and the cell to go on from.

    Raises:
        NotebookInputError: No such run, or a run that did not fail in a cell.
    """
    try:
        async with get_client() as client:
            failed = await client.read_flow_run(uuid.UUID(of_run))
    except Exception as error:  # not an id, or no such run
        raise NotebookInputError(
            f"repair_of {of_run!r}: no such flow run ({type(error).__name__})"
        ) from error
    try:
        result = await result_of_run(str(failed.id))
    except NotebookNotFoundError as error:
        raise NotebookInputError(f"repair_of {of_run}: {error}") from error
    if result.get("status") == "completed":
        raise NotebookInputError(f"run {of_run} completed: there is nothing to repair")
    failure = result.get("error") or {}
    cell = from_cell if from_cell is not None else failure.get("cell_index")
    if cell is None:
        raise NotebookInputError(
            f"run {of_run} failed before any cell ran ({failure.get('name', 'no error')}): "
            "run it again instead, or give from_cell"
        )
    arguments = {
        name: value
        for name, value in (failed.parameters or {}).items()
        if name not in NOT_CARRIED and name in defaults
    }
    for name, value in given.items():
        if name in NOT_CARRIED:
            continue
        if value != defaults.get(name) or name not in arguments:
            arguments[name] = value
    if given.get("notebook") is None:  # the notebook it ran, as it was then, by its name
        arguments["notebook"] = (result.get("artefacts") or {}).get("input") or arguments.get(
            "notebook"
        )
        arguments["name"] = arguments.get("name") or result.get("notebook")
    merged = {**(failed.parameters or {}).get("parameters", {}), **parameters}
    return arguments, merged, int(cell)


async def link_failed_run(of_run: str, repair_run: str, label: str, status: str) -> None:
    """Tell the failed run, on its page, which run repaired it and how that ended."""
    url = run_url(repair_run)
    where = f"[{repair_run}]({url})" if url else f"`{repair_run}`"
    async with get_client() as client:
        await client.create_artifact(
            ArtifactCreate(
                type="markdown",
                flow_run_id=uuid.UUID(of_run),
                description=f"{label}: repaired by run {repair_run}",
                data=f"# {label}: repaired\n\nRun {where} repaired this run: {status}.",
            )
        )
