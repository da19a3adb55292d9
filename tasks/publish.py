"""Publish what the Prefect UI shows of a run: its summary, links and outputs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from notebook_jobs.blocks.sizes import size_text
from notebook_jobs.blocks.store import ArtefactStore
from notebook_jobs.tasks.engine.layout import FILES_FOLDER
from notebook_jobs.tasks.engine.notebook_markdown import notebook_markdown
from notebook_jobs.tasks.models import SUMMARY_LINK, NotebookResult, RunContext
from notebook_jobs.tasks.notebook import artifact_key
from notebook_jobs.tasks.store.artefacts import write_result
from notebook_jobs.tasks.ui_links import artifact_url, run_url

LINK_TEXT = {
    "html": "the executed notebook, as a web page",
    "notebook": "the executed notebook (.ipynb)",
    "result": "result.json: status, outputs, timings and where every artefact is",
    "input": "the notebook as it was sent",
}
LOCAL_HOSTS = ("file:", "http://127.0.0.1", "http://localhost")


def summary_markdown(result: NotebookResult, notebook: NotebookNode | None = None) -> str:
    """The run summary shown in the Prefect UI: status, error, parameters, outputs, links,
    cells, files, and the executed notebook itself when ``notebook`` is given.

    The main artefacts are listed one per line as ``SUMMARY_LINK`` (``- [result](url)``),
    which ``summary_links`` reads back: callers over HTTP find ``result.json`` there.
    """
    lines = [f"# {result.notebook}: {result.status}", ""]
    history = artifact_url(artifact_key(result.notebook, "history"))
    if history:
        lines += [f"[Every run of {result.notebook}, its outputs over time]({history})", ""]
    if result.cached_from and result.cache:
        lines += [
            f"**Cached**: the result of run `{result.cached_from}` (cache key "
            f"`{result.cache.key[:16]}`); nothing was executed, and the links below are "
            "that run's artefacts.",
            "",
        ]
    if result.repaired_from is not None:
        repaired = result.repaired_from
        failed_page = run_url(repaired.flow_run_id)
        failed_run = (
            f"[{repaired.flow_run_id}]({failed_page})"
            if failed_page
            else f"`{repaired.flow_run_id}`"
        )
        how = (
            "in its kernel, kept alive"
            if repaired.mode == "warm"
            else "after running the cells before it again (marked re-executed)"
        )
        lines += [f"**Repair** of run {failed_run}, from cell {repaired.from_cell}, {how}.", ""]
    if result.error:
        where = f" in cell {result.error.cell_index}" if result.error.cell_index is not None else ""
        lines += [f"**{result.error.name}**{where}: {result.error.message}", ""]
        if result.error.traceback:
            lines += ["```", result.error.traceback[-3000:], "```", ""]
        if result.error.cell_index is not None and result.flow_run_id:
            lines += [
                f"Once fixed, go on from cell {result.error.cell_index}: "
                f"`nbjobs repair {result.flow_run_id}` (or run run-notebook with "
                f'`"repair_of": "{result.flow_run_id}"`).',
                "",
            ]
    timings = result.timings
    lines += [
        f"Kernel `{result.kernel}`, {timings.total_seconds:.2f} s in all "
        f"({timings.execute_seconds:.2f} s executing).",
        "",
    ]
    if result.context is not None:
        lines += [context_line(result.context), ""]
    used = result.parameters_used or result.parameters
    if used:
        lines += ["| parameter | value | from |", "|---|---|---|"]
        lines += [
            f"| {k} | `{_table_text(json.dumps(v), 200)}` | {_source(result, k)} |"
            for k, v in used.items()
        ]
        lines.append("")
    if result.outputs:
        lines += ["| output | value |", "|---|---|"]
        lines += [
            f"| {row['name']} | {_table_text(row['value'], 200)} |"
            for row in outputs_table(result.outputs)
        ]
        lines.append("")
    links = result.artefacts.links
    for kind, text in LINK_TEXT.items():
        if links.get(kind):
            lines.append(f"{SUMMARY_LINK.format(kind=kind, url=links[kind])} {text}")
    lines.append("")
    lines += ["| cell | status | seconds | peak memory | CPU s |", "|---:|---|---:|---:|---:|"]
    for cell in result.cells:
        seconds = f"{cell.duration_seconds:.3f}" if cell.duration_seconds is not None else ""
        memory = size_text(cell.peak_memory_bytes) if cell.peak_memory_bytes else ""
        cpu = f"{cell.cpu_seconds:.2f}" if cell.cpu_seconds is not None else ""
        status = f"{cell.status} (re-executed)" if cell.re_executed else cell.status
        lines.append(f"| {cell.index} | {status} | {seconds} | {memory} | {cpu} |")
    lines.append("")
    written = [(name, url) for name, url in links.items() if name.startswith(f"{FILES_FOLDER}/")]
    if result.artefacts.files:
        lines.append(f"Files the notebook wrote ({len(result.artefacts.files)}):")
        lines += [f"- [{name.removeprefix(FILES_FOLDER + '/')}]({url})" for name, url in written]
        if len(result.artefacts.files) > len(written):
            lines.append(
                f"- and {len(result.artefacts.files) - len(written)} more, listed in result.json"
            )
        lines.append("")
    if any(url.startswith(LOCAL_HOSTS) for url in links.values()):
        lines.append(_local_note(links))
    if notebook is not None:
        shown = {(d.cell, d.output): d.link for d in result.artefacts.displays}
        failed = result.error.cell_index if result.status == "failed" and result.error else None
        lines += ["", "## The notebook", ""]
        lines.append(notebook_markdown(notebook, failed_cell=failed, links=shown))
        return "\n".join(lines)
    for display in result.artefacts.displays:
        what = f"cell {display.cell}, output {display.output}: {display.content_type}"
        if display.content_type.startswith("image/") and display.link.startswith("http"):
            lines += ["", f"![{what}]({display.link})"]
        else:
            lines.append(f"- [{what}]({display.link or display.uri})")
    for note in result.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines)


SOURCE_TEXT = {
    "run": "run",
    "deployment": "deployment",
    "notebook": "notebook default",
    "context": "the run's context",
}


def context_line(context: RunContext) -> str:
    """What the run is for: ``For **2026-01-05** (06:00:00+01:00, Europe/Berlin), by the
    schedule of run-notebook/daily, attempt 2.``"""
    by = f"by {context.trigger}"
    if context.deployment:
        by += f" of {context.deployment}"
    attempt = f", attempt {context.attempt}" if context.attempt > 1 else ""
    return (
        f"For **{context.logical_date}** ({context.scheduled_time}, {context.timezone}), "
        f"{by}{attempt}."
    )


def _source(result: NotebookResult, name: str) -> str:
    """Where a parameter's value came from, as the summary says it."""
    found = result.parameters_from.get(name)
    if found is None:  # a result from before parameters_from
        found = "run" if name in result.parameters else "notebook"
    return SOURCE_TEXT[found]


def _local_note(links: dict[str, str]) -> str:
    if any(url.startswith("file:") for url in links.values()):
        return (
            "_A local store: these `file://` links open on the machine that stores the runs, "
            "not from this page (`nbjobs server start` serves them over HTTP)._"
        )
    return (
        "_A local store, served by the local server's worker on 127.0.0.1: these links open "
        "in a browser on the machine that runs it, while it runs._"
    )


def _table_text(text: str, limit: int) -> str:
    """``text`` as one markdown table cell: one line, pipes escaped, cut at ``limit``."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat.replace("|", "\\|")


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


PUBLISH_RETRY_DELAYS_SECONDS = (1.0, 5.0)


async def _retrying(call: Callable[[], Awaitable[Any]], what: str) -> None:
    """Await ``call()``, again after each of ``PUBLISH_RETRY_DELAYS_SECONDS`` if it raises."""
    for delay in (*PUBLISH_RETRY_DELAYS_SECONDS, None):
        try:
            await call()
            return
        except Exception as error:
            if delay is None:
                raise
            get_run_logger().warning("%s failed (%s); trying again in %.0f s", what, error, delay)
            await asyncio.sleep(delay)


async def publish_result(
    result: NotebookResult,
    key_of: dict[str, str],
    store: ArtefactStore | None = None,
    prefix: str | None = None,
    executed: Path | None = None,
) -> None:
    """Write ``result.json`` to the store, then publish what the Prefect UI shows.

    Two artifacts, keyed per notebook so the UI keeps each notebook's history: the
    summary (with the links, the outputs and the executed notebook folded in) and the
    outputs as a table. Called in the flow run itself, not in a task, so both belong to
    the flow run; each call is tried again twice if it fails.

    Args:
        result: The run's result.
        key_of: Artifact keys by kind (``summary``, ``outputs``).
        store: Where ``result.json`` goes (None: it was written elsewhere, e.g. spilled).
        prefix: The run's key prefix in ``store``.
        executed: The executed notebook, rendered into the summary.
    """
    if store is not None and prefix is not None:
        await _retrying(lambda: write_result(result, store, prefix), "writing result.json")
    notebook = None
    if executed is not None and executed.exists():
        try:
            notebook = await asyncio.to_thread(nbformat.read, executed, as_version=4)
        except Exception as error:  # the summary without the notebook, not no summary
            get_run_logger().warning("could not read %s for the summary: %s", executed, error)
    summary = summary_markdown(result, notebook)
    await _retrying(
        lambda: acreate_markdown_artifact(
            summary, key=key_of["summary"], description=f"{result.notebook} run summary"
        ),
        "publishing the summary",
    )
    if result.outputs:
        await _retrying(
            lambda: acreate_table_artifact(
                outputs_table(result.outputs),
                key=key_of["outputs"],
                description=f"Values {result.notebook} reported",
            ),
            "publishing the outputs",
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
        self._last: list[dict[str, str]] | None = None  # the version the UI has

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
            row["run"] = run_url(str(item.flow_run_id), self.ui_url or None) or str(
                item.flow_run_id
            )

    def table(self) -> list[dict[str, str]]:
        """The rows with every column each row has, in a stable order."""
        columns: list[str] = []
        for row in self.rows:
            columns += [name for name in row if name not in columns]
        return [{name: row.get(name, "") for name in columns} for row in self.rows]

    async def publish(self, *, final: bool = False) -> None:
        """Publish the table now if ``final`` or if the last version is old enough, and
        only if it changed: one version per change, not one per call."""
        now = time.monotonic()
        if not final and now - self._published < BATCH_TABLE_INTERVAL_SECONDS:
            return
        table = self.table()
        if table == self._last:
            return
        self._published = now
        done = sum(1 for row in self.rows if row["status"] != "pending")
        await acreate_table_artifact(
            table, key=self.key, description=f"{done} of {len(self.rows)} notebooks done"
        )
        self._last = table


def _parameters_text(parameters: dict[str, Any]) -> str:
    return " ".join(f"{name}={_cell(value)}" for name, value in parameters.items())[:300]
