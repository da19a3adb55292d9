"""The cells of a run, one by one: each executed, timed, reported and read back.

``run_plan`` executes the planned cells in order through nbclient and records how
each went in a ``RunProgress``, sending a ``CellEvent`` before and after each one. Also
here: what a cell leaves (its streams and traceback, for the log and the error),
papermill's error banners on a failed run, and the files a run wrote in its working
folder. The kernel's life around it is ``execution.py``'s.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG

import nbformat
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from papermill.execute import ERROR_ANCHOR_MSG, ERROR_MARKER_TAG, ERROR_MESSAGE_TEMPLATE

from notebook_jobs.tasks.engine.kernels.client import (
    CappedClient,
    cancelled_not_dead,
    death_cause,
)
from notebook_jobs.tasks.engine.kernels.memory import CellUsage, MemoryWatch
from notebook_jobs.tasks.engine.secrets import RunSecrets
from notebook_jobs.tasks.models import CellReport, CellStatus, ErrorInfo, Resources, RunStatus

LOG_STREAM_CHARS = 2000
# A working folder of the user's own (``cwd``) can be large: the before/after
# comparison that finds the files a run wrote skips hidden folders and stops here.
MAX_SNAPSHOT_FILES = 20_000
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """Remove terminal colour codes (IPython tracebacks are coloured)."""
    return _ANSI.sub("", text)


def stream_text(cell: NotebookNode, name: str) -> str:
    """A cell's ``stdout`` or ``stderr`` as one text, cut at ``LOG_STREAM_CHARS`` (for logs)."""
    text = "".join(
        o.get("text", "")
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == name
    )
    return text if len(text) <= LOG_STREAM_CHARS else text[:LOG_STREAM_CHARS] + "... [truncated]"


def cell_traceback(cell: NotebookNode) -> str:
    """The traceback a cell shows, without colour codes; '' if it raised nothing."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return strip_ansi("\n".join(output.get("traceback", [])))
    return ""


def numbered(traceback: str, execution_count: int | None, index: int | None) -> str:
    """IPython's ``Cell In[4], line 2`` as ``cell 3, line 2``: one numbering for a cell
    in the log, the summary and the error (its index in the notebook, as everywhere
    else), not the kernel's execution counter."""
    if execution_count is None or index is None:
        return traceback
    return traceback.replace(f"Cell In[{execution_count}]", f"cell {index}")


def files_snapshot(folder: Path, notes: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """Each file under ``folder`` with its modification time and size.

    Hidden folders (``.git``, ``.ipynb_checkpoints``) and ``__pycache__`` are skipped;
    past ``MAX_SNAPSHOT_FILES`` files the rest are not looked at, and ``notes`` says so.
    """
    snapshot: dict[str, tuple[int, int]] = {}
    for root, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith(".") and f != "__pycache__"]
        for name in files:
            path = Path(root, name)
            try:
                stat = path.lstat()
            except OSError:  # removed meanwhile
                continue
            if not S_ISREG(stat.st_mode):
                continue
            snapshot[path.relative_to(folder).as_posix()] = (stat.st_mtime_ns, stat.st_size)
            if len(snapshot) >= MAX_SNAPSHOT_FILES:
                if notes is not None:
                    notes.append(
                        f"the working folder {folder} holds more than {MAX_SNAPSHOT_FILES} "
                        "files: files written beyond them were not stored"
                    )
                return snapshot
    return snapshot


def clear_outputs(nb: NotebookNode) -> None:
    """Clear every code cell's outputs, execution count and timing, as papermill and
    nbclient do before a run: a cell then shows only what it did in this run, and one
    left out, or never reached after a failure, timeout or cancellation, shows nothing."""
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            cell.get("metadata", {}).pop("execution", None)


def add_error_banners(nb: NotebookNode, position: int, execution_count: int | None) -> None:
    """Papermill's two markdown cells for a failed run: a note at the top linking to an
    anchor just before the cell that raised (``position``)."""
    anchor = nbformat.v4.new_markdown_cell(ERROR_ANCHOR_MSG)
    anchor.metadata["tags"] = [ERROR_MARKER_TAG]
    message = nbformat.v4.new_markdown_cell(ERROR_MESSAGE_TEMPLATE % str(execution_count))
    message.metadata["tags"] = [ERROR_MARKER_TAG]
    nb.cells.insert(position, anchor)
    nb.cells.insert(0, message)


@dataclass
class CellEvent:
    """Progress of a run, sent before and after each executed cell."""

    phase: str  # "start", "output" (what a running cell printed so far) or "end"
    index: int  # position in the input notebook
    done: int  # cells finished so far
    total: int  # cells that will run
    report: CellReport | None = None
    stdout: str = ""
    stderr: str = ""


EventCallback = Callable[[CellEvent], Awaitable[None] | None]


@dataclass
class RunProgress:
    """How the run is going, filled in as cells end."""

    status: RunStatus = "completed"
    error: ErrorInfo | None = None
    reports: dict[int, CellReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kernel_start_seconds: float | None = None
    resources: Resources = field(default_factory=Resources)
    memory: MemoryWatch = field(default_factory=MemoryWatch)
    error_position: int | None = None  # the failed cell's position in the notebook
    running: int | None = None  # the cell running now (its index in the input notebook)


async def emit(callback: EventCallback | None, event: CellEvent) -> None:
    if callback is None:
        return
    try:
        outcome = callback(event)
        if inspect.isawaitable(outcome):
            await outcome
    except Exception:  # progress reporting must never break a run
        pass


async def run_plan(
    client: CappedClient,
    plan: list[tuple[int, int | None]],
    total: int,
    progress: RunProgress,
    on_event: EventCallback | None,
    secrets: RunSecrets | None = None,
) -> None:
    done = 0
    for position, source_index in plan:
        cell = client.nb.cells[position]
        progress.running = source_index
        streamed = {"stdout": 0, "stderr": 0}  # what the log has of this cell's streams
        streaming: asyncio.Future[None] | None = None
        if source_index is not None:
            await emit(on_event, CellEvent("start", source_index, done, total))
            if on_event is not None and secrets is None:
                # (a run with secrets logs a cell's prints once masked, when it ends)
                streaming = asyncio.ensure_future(
                    _stream_while_running(cell, source_index, done, total, on_event, streamed)
                )
        t_cell = time.perf_counter()
        progress.memory.start_cell(source_index)
        status: CellStatus = "ok"
        timeout_used = client._get_timeout(cell)
        client.timed_out = False
        shown = cell.source
        real = secrets.sources.get(position) if secrets is not None else None
        try:
            if real is not None:
                # the value in the kernel only: the cell keeps its masked source, and
                # IPython's history database (on disk) never sees this one
                cell.source = real
                await client.async_execute_cell(cell, position, store_history=False)
            else:
                await client.async_execute_cell(cell, position)
        except CellExecutionError as error:
            if client.timed_out:  # interrupted at its timeout: the error is the interrupt
                status = _cell_timed_out(
                    progress,
                    source_index,
                    f"cell {source_index} exceeded the per-cell timeout of {timeout_used:g} s",
                    cell_traceback(cell) or strip_ansi(error.traceback),
                )
            elif error.ename == "SystemExit" and error.evalue.strip() in ("", "0", "None"):
                progress.notes.append(
                    f"the notebook stopped itself with sys.exit(0) in cell {source_index}; "
                    "later cells were not run"
                )
                status = "ok"
                _finish(progress, cell, source_index, status, t_cell, progress.memory.end_cell())
                break
            else:
                status = "error"
                progress.status = "failed"
                progress.error_position = position
                where = "" if source_index is not None else " (in the injected parameters cell)"
                progress.error = ErrorInfo(
                    name=error.ename,
                    message=error.evalue + where,
                    cell_index=source_index,
                    traceback=numbered(
                        cell_traceback(cell) or strip_ansi(error.traceback),
                        cell.get("execution_count"),
                        source_index,
                    ),
                )
        except CellTimeoutError as error:
            # the kernel did not answer the interrupt: the cell still shows why it stopped
            message = (
                f"cell {source_index} exceeded the per-cell timeout of {timeout_used:g} s "
                "and did not answer an interrupt"
            )
            cell.setdefault("outputs", []).append(
                nbformat.v4.new_output(
                    "error", ename="CellTimeoutError", evalue=message, traceback=[message]
                )
            )
            status = _cell_timed_out(progress, source_index, message, str(error))
        except DeadKernelError:
            if await cancelled_not_dead(client):
                # nbclient reports a cancelled wait as a dead kernel; it is a cancellation
                raise asyncio.CancelledError() from None
            status = "error"
            progress.status = "kernel_died"
            progress.error = ErrorInfo(
                name="KernelDiedError",
                message=f"the kernel died while running cell {source_index}"
                f"{await death_cause(client)}; its state is lost",
                cell_index=source_index,
            )
        finally:
            cell.source = shown
            if streaming is not None:
                streaming.cancel()
        usage = progress.memory.end_cell()
        if progress.memory.exceeded is not None:  # interrupted, or killed, at the limit
            status = _over_memory_limit(progress, cell, position, source_index)
        if secrets is not None:  # before anything reads the outputs
            secrets.mask_cell(cell)
            if progress.error is not None:
                progress.error = ErrorInfo.model_validate(
                    secrets.mask_value(progress.error.model_dump())
                )
        report = _finish(progress, cell, source_index, status, t_cell, usage)
        if source_index is not None:
            done += 1
            await emit(
                on_event,
                CellEvent(
                    "end",
                    source_index,
                    done,
                    total,
                    report,
                    stdout=_unsent(cell, "stdout", streamed),
                    stderr=_unsent(cell, "stderr", streamed),
                ),
            )
        if status != "ok":
            break
    progress.running = None


STREAM_SECONDS = 1.0  # a running cell's prints reach the log this often


def _unsent(cell: NotebookNode, name: str, streamed: dict[str, int]) -> str:
    """What the cell printed on ``name`` that the log does not have yet."""
    text = stream_text(cell, name)
    new = text[streamed[name] :]
    streamed[name] = len(text)
    return new


async def _stream_while_running(
    cell: NotebookNode,
    source_index: int,
    done: int,
    total: int,
    on_event: EventCallback,
    streamed: dict[str, int],
) -> None:
    """Every ``STREAM_SECONDS`` while a cell runs, send what it printed since:
    a slow cell's prints reach the run's log as they come, not when it ends. Only
    whole lines: the rest waits for the next round or the cell's end."""
    while True:
        await asyncio.sleep(STREAM_SECONDS)
        texts = {}
        for name in ("stdout", "stderr"):
            text = stream_text(cell, name)[streamed[name] :]
            whole = text[: text.rfind("\n") + 1]
            streamed[name] += len(whole)
            texts[name] = whole
        if texts["stdout"] or texts["stderr"]:
            await emit(
                on_event,
                CellEvent(
                    "output", source_index, done, total, None, texts["stdout"], texts["stderr"]
                ),
            )


def _cell_timed_out(
    progress: RunProgress, source_index: int | None, message: str, traceback: str
) -> CellStatus:
    """Record a cell that overran the per-cell timeout; its status."""
    progress.status = "timed_out"
    progress.error = ErrorInfo(
        name="NotebookTimeoutError", message=message, cell_index=source_index, traceback=traceback
    )
    return "timed_out"


def _over_memory_limit(
    progress: RunProgress, cell: NotebookNode, position: int, source_index: int | None
) -> CellStatus:
    """Record a cell stopped at the memory limit: the run fails with ``MemoryLimitError``,
    and the cell shows why below what it printed."""
    message = progress.memory.limit_message()
    traceback = cell_traceback(cell)  # the interrupt, where the cell was
    cell.setdefault("outputs", []).append(
        nbformat.v4.new_output(
            "error", ename="MemoryLimitError", evalue=message, traceback=[message]
        )
    )
    progress.status = "failed"
    progress.error_position = position
    progress.error = ErrorInfo(
        name="MemoryLimitError",
        message=message,
        cell_index=source_index,
        traceback=numbered(traceback, cell.get("execution_count"), source_index),
    )
    return "error"


def _finish(
    progress: RunProgress,
    cell: NotebookNode,
    source_index: int | None,
    status: CellStatus,
    t_cell: float,
    usage: CellUsage,
) -> CellReport | None:
    if source_index is None:
        return None
    report = CellReport(
        index=source_index,
        status=status,
        duration_seconds=round(time.perf_counter() - t_cell, 4),
        peak_memory_bytes=usage.peak_memory_bytes,
        cpu_seconds=usage.cpu_seconds,
        execution_count=cell.get("execution_count"),
        tags=list(cell.metadata.get("tags", [])),
    )
    progress.reports[source_index] = report
    return report
