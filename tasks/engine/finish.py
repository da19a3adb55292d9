"""The executed notebook, finished as a reader expects it, and each cell's metadata.

After the cells ran (or stopped): each cell says how it went in ``metadata.nbjobs``,
papermill's banners mark a failure, secret values are masked, the glued scraps are read,
and the notebook's own ``metadata.nbjobs`` says how the run ended. Prefect-free.
"""

from __future__ import annotations

from typing import Any

from nbformat import NotebookNode

from notebook_jobs.tasks.engine.cells import RunProgress, add_error_banners
from notebook_jobs.tasks.engine.kernels.client import CappedClient
from notebook_jobs.tasks.engine.outputs import read_scraps
from notebook_jobs.tasks.engine.secrets import MIN_MASKED_CHARS, RunSecrets
from notebook_jobs.tasks.models import CellReport, ErrorInfo


def mark_cells(
    nb: NotebookNode,
    origin: list[int | None],
    reports: dict[int, CellReport],
    re_executed_before: int | None = None,
) -> None:
    """Each cell's index, status and seconds in its ``metadata.nbjobs``; before a cold
    repair's cell, those that ran are marked ``re_executed`` (in their report too)."""
    rebuilt_before = re_executed_before
    for position, source_index in enumerate(origin):
        report = reports.get(source_index) if source_index is not None else None
        meta: dict[str, Any] = {"index": source_index}
        if report is not None:
            if (
                rebuilt_before is not None
                and report.index < rebuilt_before
                and report.status not in ("skipped", "not_run")
            ):
                report.re_executed = True  # a cold repair rebuilt the failed run's state
                meta["re_executed"] = True
            meta.update(status=report.status, duration_seconds=report.duration_seconds)
        nb.cells[position].metadata["nbjobs"] = meta


def finish_notebook(
    nb: NotebookNode,
    origin: list[int | None],
    progress: RunProgress,
    kernel: str,
    secrets: RunSecrets | None,
    client: CappedClient,
) -> dict[str, Any]:
    """Papermill's banners on a failure, secrets masked, the truncation noted, the run's
    status in the notebook's metadata; returns the glued outputs (notes in ``progress``)."""
    if progress.status == "failed" and progress.error_position is not None:
        # as papermill marks a failed run (and not a timed-out one, which it stops)
        add_error_banners(
            nb,
            progress.error_position,
            nb.cells[progress.error_position].get("execution_count"),
        )
    if secrets is not None:  # a cell cut short (timeout, cancel) was not masked yet
        secrets.mask_notebook(nb)
        if progress.error is not None:
            progress.error = ErrorInfo.model_validate(
                secrets.mask_value(progress.error.model_dump())
            )
        if secrets.unmasked:
            progress.notes.append(
                f"secret parameter(s) {', '.join(secrets.unmasked)} are shorter than "
                f"{MIN_MASKED_CHARS} characters and were not masked in the outputs"
            )
    outputs, scrap_notes = read_scraps(nb)
    progress.notes.extend(scrap_notes)
    if client._truncated:
        progress.notes.append(
            "output truncated in cell(s) "
            + ", ".join(str(origin[p]) for p in sorted(client._truncated) if p < len(origin))
        )
    nb.metadata["nbjobs"] = {
        "status": progress.status,
        "kernel": kernel,
        "error": progress.error.model_dump() if progress.error else None,
    }
    return outputs
