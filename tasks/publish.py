"""Publish what the Prefect UI shows of a run: its summary, links and outputs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from prefect import get_run_logger, task
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from notebook_jobs.blocks.store import ArtefactStore
from notebook_jobs.tasks.engine.notebook_markdown import notebook_markdown
from notebook_jobs.tasks.models import NotebookResult
from notebook_jobs.tasks.store.artefacts import write_result


def summary_markdown(result: NotebookResult, notebook: NotebookNode | None = None) -> str:
    """The run summary shown in the Prefect UI: status, error, parameters, links, cells,
    and the executed notebook itself when ``notebook`` is given."""
    lines = [f"# {result.notebook}: {result.status}", ""]
    if result.error:
        where = f" in cell {result.error.cell_index}" if result.error.cell_index is not None else ""
        lines += [f"**{result.error.name}**{where}: {result.error.message}", ""]
        if result.error.traceback:
            lines += ["```", result.error.traceback[-3000:], "```", ""]
    timings = result.timings
    lines += [
        f"Kernel `{result.kernel}`, {timings.total_seconds:.2f} s in all "
        f"({timings.execute_seconds:.2f} s executing).",
        "",
    ]
    used = result.parameters_used or result.parameters
    if used:
        lines += ["| parameter | value | from |", "|---|---|---|"]
        lines += [
            f"| {k} | `{json.dumps(v)[:200]}` | {'run' if k in result.parameters else 'default'} |"
            for k, v in used.items()
        ]
        lines.append("")
    lines += ["| cell | status | seconds |", "|---:|---|---:|"]
    for cell in result.cells:
        seconds = f"{cell.duration_seconds:.3f}" if cell.duration_seconds is not None else ""
        lines.append(f"| {cell.index} | {cell.status} | {seconds} |")
    lines.append("")
    for name, link in result.artefacts.links.items():
        lines.append(f"- [{name}]({link})")
    if any(link.startswith("file:") for link in result.artefacts.links.values()):
        lines.append(
            "- (a local store: these links open on the machine that stores the runs, "
            "not from this page)"
        )
    if notebook is not None:
        links = {(d.cell, d.output): d.link for d in result.artefacts.displays}
        failed = result.error.cell_index if result.status == "failed" and result.error else None
        lines += ["", "## The notebook", ""]
        lines.append(notebook_markdown(notebook, failed_cell=failed, links=links))
        return "\n".join(lines)
    for shown in result.artefacts.displays:
        what = f"cell {shown.cell}, output {shown.output}: {shown.content_type}"
        if shown.content_type.startswith("image/") and shown.link.startswith("http"):
            lines += ["", f"![{what}]({shown.link})"]
        else:
            lines.append(f"- [{what}]({shown.link or shown.uri})")
    for note in result.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines)


def outputs_table(outputs: dict[str, Any]) -> list[dict[str, str]]:
    """The notebook's reported values as table rows: a string as itself, others as JSON.

    Example:
        >>> outputs_table({"label": "monthly", "total": 30})
        [{'name': 'label', 'value': 'monthly'}, {'name': 'total', 'value': '30'}]
    """
    return [
        {"name": k, "value": (v if isinstance(v, str) else json.dumps(v))[:1000]}
        for k, v in outputs.items()
    ]


@task(name="publish-result", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def publish_result(
    result: NotebookResult,
    key_of: dict[str, str],
    store: ArtefactStore | None = None,
    prefix: str | None = None,
    executed: Path | None = None,
) -> None:
    """Write ``result.json`` to the store, then publish what the Prefect UI shows.

    The Prefect artifacts: the summary, links to the stored notebook, HTML and result,
    and the notebook's outputs as a table.

    Args:
        result: The run's result.
        key_of: Artifact keys by kind (``summary``, ``notebook``, ``html``, ``result``,
            ``outputs``), stable per notebook so the UI keeps each notebook's history.
        store: Where ``result.json`` goes (None: it was written elsewhere, e.g. spilled).
        prefix: The run's key prefix in ``store``.
        executed: The executed notebook, rendered into the summary.
    """
    if store is not None and prefix is not None:
        await write_result(result, store, prefix)
    notebook = None
    if executed is not None and executed.exists():
        try:
            notebook = await asyncio.to_thread(nbformat.read, executed, as_version=4)
        except Exception as error:  # the summary without the notebook, not no summary
            get_run_logger().warning("could not read %s for the summary: %s", executed, error)
    # One after the other: on Prefect's SQLite server, five concurrent creations took
    # 141 ms against 100 ms in sequence (writes queue for the database lock).
    await acreate_markdown_artifact(
        summary_markdown(result, notebook),
        key=key_of["summary"],
        description=f"{result.notebook} run summary",
    )
    for kind in ("notebook", "html", "result"):
        link = result.artefacts.links.get(kind)
        if link:
            await acreate_link_artifact(
                link,
                link_text=f"{result.notebook}: {kind}",
                key=key_of[kind],
                description=f"The run's {kind} in the artefact store",
            )
    if result.outputs:
        await acreate_table_artifact(
            outputs_table(result.outputs),
            key=key_of["outputs"],
            description=f"Values {result.notebook} reported",
        )


BATCH_TABLE_INTERVAL_SECONDS = 2.0  # a batch of a thousand makes tens of versions, not 1,000


def _cell(value: Any) -> str:
    return (value if isinstance(value, str) else json.dumps(value, default=str))[:200]


class BatchTable:
    """A batch as one table artifact: a row per item, updated as items finish.

    Columns: the item, its parameters, status, seconds, each glued output, and its run
    in the UI. A new version of the artifact (same key) is published at most every
    ``BATCH_TABLE_INTERVAL_SECONDS`` and once at the end, so the Artifacts page shows
    the batch filling in.
    """

    def __init__(self, key: str, requests: list[Any], ui_url: str | None) -> None:
        self.key = key
        self.ui_url = (ui_url or "").rstrip("/")
        self.rows: list[dict[str, str]] = [
            {"item": str(i), "parameters": _parameters_text(r.parameters), "status": "pending"}
            for i, r in enumerate(requests)
        ]
        self._published = 0.0

    def record(self, item: Any) -> None:
        """Fill in the row of a finished ``BatchItem``."""
        row = self.rows[item.index]
        row["status"] = item.status
        result = item.result or {}
        seconds = (result.get("timings") or {}).get("total_seconds")
        row["seconds"] = f"{seconds:.2f}" if isinstance(seconds, (int, float)) else ""
        for name, value in (result.get("outputs") or {}).items():
            row[f"output {name}"] = _cell(value)
        if item.error:
            row["error"] = item.error[:200]
        if item.flow_run_id:
            row["run"] = (
                f"{self.ui_url}/runs/flow-run/{item.flow_run_id}"
                if self.ui_url
                else item.flow_run_id
            )

    def table(self) -> list[dict[str, str]]:
        """The rows with every column each row has, in a stable order."""
        columns: list[str] = []
        for row in self.rows:
            columns += [name for name in row if name not in columns]
        return [{name: row.get(name, "") for name in columns} for row in self.rows]

    async def publish(self, *, final: bool = False) -> None:
        """Publish the table now if ``final`` or if the last version is old enough."""
        now = time.monotonic()
        if not final and now - self._published < BATCH_TABLE_INTERVAL_SECONDS:
            return
        self._published = now
        done = sum(1 for row in self.rows if row["status"] != "pending")
        await acreate_table_artifact(
            self.table(), key=self.key, description=f"{done} of {len(self.rows)} notebooks done"
        )


def _parameters_text(parameters: dict[str, Any]) -> str:
    return " ".join(f"{name}={_cell(value)}" for name, value in parameters.items())[:300]
