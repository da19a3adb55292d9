"""A warm repair: a failed run's kept kernel goes on from a cell, the cells before it
shown as the failed run left them. Prefect-free."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nbformat import NotebookNode

from notebook_jobs.tasks.engine.kernels.client import StartedKernel
from notebook_jobs.tasks.engine.kernels.kept import KeptKernel
from notebook_jobs.tasks.engine.staged import StagedNotebook
from notebook_jobs.tasks.engine.staging import INJECTED_TAG
from notebook_jobs.tasks.models import CellReport


@dataclass(frozen=True)
class Resume:
    """A warm repair: a failed run's kernel, kept alive, goes on from ``from_cell``.

    Attributes:
        from_cell: The first cell to run (its index in the input notebook).
        earlier: The failed run's executed notebook: the cells before keep its outputs.
        rerun_parameters: Run the injected parameters cell again (the repair changed
            parameters); otherwise the kernel keeps the values it has.
    """

    from_cell: int
    earlier: NotebookNode
    rerun_parameters: bool = False


KeepKernel = Callable[[StartedKernel, Path], bool]


def carry_earlier(
    nb: NotebookNode, origin: list[int | None], resume: Resume, reports: dict[int, CellReport]
) -> None:
    """The cells before ``from_cell`` as the failed run left them: outputs, execution
    counts and reports (they ran in the kernel this run goes on in)."""
    earlier = {
        meta.get("index"): (cell, meta)
        for cell in resume.earlier.cells
        if cell.cell_type == "code"
        and (meta := cell.metadata.get("nbjobs") or {}).get("index") is not None
    }
    for position, cell in enumerate(nb.cells):
        index = origin[position]
        if cell.cell_type != "code" or index is None or index >= resume.from_cell:
            continue
        found, meta = earlier.get(index, (None, {}))
        if found is None:
            continue
        cell["outputs"] = list(found.get("outputs", []))
        cell["execution_count"] = found.get("execution_count")
        reports[index] = CellReport(
            index=index,
            status=meta.get("status") or "ok",
            duration_seconds=meta.get("duration_seconds"),
            execution_count=found.get("execution_count"),
            tags=list(cell.metadata.get("tags", [])),
        )


def resume_of(staged: StagedNotebook, kept: KeptKernel | None) -> Resume | None:
    """A repair going on in ``kept`` from its cell; the injected parameters run again only
    when the repair changed them (else the kernel keeps what its cells made of them)."""
    if kept is None:
        return None
    return Resume(
        from_cell=staged.repair_from_cell or 0,
        earlier=kept.notebook,
        rerun_parameters=injected_source(staged.notebook) != injected_source(kept.notebook),
    )


def injected_source(nb: NotebookNode) -> str | None:
    """The source of the cell staging injected (tagged ``INJECTED_TAG``), if any."""
    for cell in nb.cells:
        if INJECTED_TAG in cell.metadata.get("tags", []):
            return str(cell.source)
    return None
