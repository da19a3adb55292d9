"""The contract every layer speaks: what a run is asked to do and what it reports.

``NotebookRequest`` is what callers send (the flow's parameters, one per field);
``ExecutionReport`` is what the execute step produces wherever it ran (a local
kernel, or a Slurm job running the same code); ``NotebookResult`` is what the run
returns and stores as ``result.json``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from notebook_jobs.blocks.exceptions import (
    KernelDiedError,
    MemoryLimitError,
    NotebookExecutionError,
    NotebookRunError,
    NotebookTimeoutError,
    SlurmJobError,
    SlurmNodeFailureError,
)

RunStatus = Literal["completed", "failed", "timed_out", "kernel_died", "cancelled"]
CellStatus = Literal["ok", "error", "timed_out", "skipped", "not_run", "cancelled"]


class NotebookRequest(BaseModel):
    """One notebook run, as a caller asks for it.

    Example:
        >>> NotebookRequest(notebook="examples/report.ipynb", parameters={"n": 5})
        NotebookRequest(notebook='examples/report.ipynb', ...)
    """

    model_config = ConfigDict(extra="forbid")

    notebook: str | dict[str, Any] = Field(
        description=(
            "A local path, an s3:// URI, an http(s):// URL, or the notebook's JSON itself."
        )
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Values injected into the cell tagged 'parameters' (JSON values only).",
    )
    name: str | None = Field(
        default=None,
        max_length=80,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_. -]*$",
        description=(
            "What to call the notebook in run names, tags, artifacts and the result; "
            "default: its file name, or for a notebook sent inline its metadata's "
            "'name' or 'title', else 'notebook'."
        ),
    )
    kernel: str | None = Field(
        default=None, description="Kernel name; defaults to the notebook's own kernelspec."
    )
    cells: str | list[int | str] | None = Field(
        default=None,
        description=(
            "Cells to run: indices, inclusive ranges ('2-5') and tags, as a list or a "
            "comma-separated string. The parameters cell always runs. Default: all."
        ),
    )
    cell_timeout_seconds: float | None = Field(
        default=None, gt=0, description="Limit for any one cell; none by default."
    )
    timeout_seconds: float | None = Field(
        default=None, gt=0, description="Limit for the whole execution; none by default."
    )
    store: str | None = Field(
        default=None,
        description="Artefact store: s3://bucket/prefix, a local path, or a block name.",
    )
    cluster: str | None = Field(
        default=None, description="A SlurmCluster block name: run the notebook as a Slurm job."
    )
    input_files: list[str] = Field(
        default_factory=list,
        description="Files copied into the notebook's working folder: paths, s3:// or URLs.",
    )
    cwd: str | None = Field(
        default=None,
        description=(
            "The kernel's working folder, on the machine that runs it (papermill's --cwd); "
            "files written there during the run are stored too. Default: a fresh folder "
            "of the run's own (nbjobs run passes the notebook's folder)."
        ),
    )
    language: str | None = Field(
        default=None,
        description="Language the parameters are written in; default: the notebook's own.",
    )
    report_mode: bool = Field(
        default=False, description="Hide the source of every code cell (papermill's report mode)."
    )
    start_timeout_seconds: float | None = Field(
        default=None, gt=0, description="Limit for the kernel to start; 60 s by default."
    )
    repair_of: str | None = Field(
        default=None,
        description=(
            "A failed run's flow run id: continue it from its failing cell (or from_cell), "
            "with its notebook, parameters and options unless given here."
        ),
    )
    from_cell: int | None = Field(
        default=None, ge=0, description="With repair_of: the cell to continue from."
    )
    keep_failed_kernel_seconds: float | None = Field(
        default=None,
        ge=0,
        description=(
            "How long the kernel of this run, if it fails in a cell, waits alive for a "
            "repair (nbjobs repair); default: the worker's (nbjobs run on the local "
            "server sends 10 minutes)."
        ),
    )
    memory_limit_bytes: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Resident memory the kernel and its children may use: the cell that reaches it "
            "is interrupted and the run fails with MemoryLimitError; none by default."
        ),
    )
    strict_parameters: bool = Field(
        default=False,
        description=(
            "Refuse parameters the notebook does not declare, instead of injecting them "
            "with a warning as papermill does."
        ),
    )
    cache: bool = Field(
        default=False,
        description=(
            "Reuse a completed run with the same cache key (code cells, parameters with "
            "secrets by reference, kernel, input files' checksums, environment "
            "fingerprint) instead of running again."
        ),
    )
    cache_expiration_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How long a completed run may be reused; by default, until its key changes.",
    )
    refresh_cache: bool = Field(
        default=False, description="Run even when a cached run matches, and cache this one."
    )
    cache_fingerprint: str | None = Field(
        default=None,
        max_length=500,
        description=(
            "The environment's fingerprint in the cache key; by default the hash of the "
            "lock file beside the notebook (uv.lock, poetry.lock, ...), else of the "
            "installed packages."
        ),
    )


class CellReport(BaseModel):
    """How one code cell went. ``index`` is the cell's position in the input notebook."""

    index: int
    status: CellStatus
    duration_seconds: float | None = None
    peak_memory_bytes: int | None = Field(
        default=None,
        description="The highest resident memory of the kernel and its children in the cell.",
    )
    cpu_seconds: float | None = Field(
        default=None, description="CPU seconds the kernel and its children spent in the cell."
    )
    execution_count: int | None = None
    tags: list[str] = Field(default_factory=list)
    re_executed: bool = Field(
        default=False,
        description="Run again by a cold repair to rebuild the failed run's state.",
    )


class ErrorInfo(BaseModel):
    """Why a run did not succeed."""

    name: str
    message: str
    cell_index: int | None = None
    traceback: str = ""


class Resources(BaseModel):
    """What the kernel process used."""

    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None


class ExecutionReport(BaseModel):
    """What the execute step reports, wherever it ran (written as ``execution.json``)."""

    status: RunStatus
    error: ErrorInfo | None = None
    kernel: str
    cells: list[CellReport] = Field(default_factory=list)
    outputs: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    files: list[str] = Field(
        default_factory=list, description="Files the notebook wrote, relative to its folder."
    )
    notes: list[str] = Field(default_factory=list)
    started_at: datetime
    finished_at: datetime
    kernel_start_seconds: float | None = None
    execute_seconds: float = 0.0
    repair_mode: Literal["warm", "cold"] | None = None  # a repair: how it went on

    @property
    def success(self) -> bool:
        """True when every selected cell ran without error."""
        return self.status == "completed"


class DisplayOutput(BaseModel):
    """A rich output of a cell (a plot, a table, data), stored as ``outputs/cell-5-0.png``."""

    cell: int = Field(description="The cell's position in the input notebook.")
    output: int = Field(description="The output's position among the cell's outputs.")
    content_type: str = Field(description="Its MIME type: image/png, text/html, ...")
    size_bytes: int
    uri: str = ""
    link: str = Field(default="", description="A link a browser opens (presigned for S3).")


class Artefacts(BaseModel):
    """Where a run's artefacts are (store URIs) and browser links to the main ones.

    ``links`` holds the input, notebook, HTML and result by kind, and the first
    ``MAX_LINKED_FILES`` files the notebook wrote as ``files/<path>``.
    """

    prefix: str
    input: str | None = None
    notebook: str | None = None
    html: str | None = None
    result: str | None = None
    files: dict[str, str] = Field(default_factory=dict)
    logs: dict[str, str] = Field(
        default_factory=dict, description="Slurm job stdout, stderr and the job folder as a zip."
    )
    links: dict[str, str] = Field(default_factory=dict)
    displays: list[DisplayOutput] = Field(
        default_factory=list,
        description="Plots, tables and data the cells displayed, each stored on its own.",
    )


MAX_LINKED_FILES = 20  # files the notebook wrote that get a browser link each

# How a run summary lists its main artefacts, one per line: ``- [result](https://...)``.
# It is the one artifact a caller needs: ``summary_links`` reads the links back.
SUMMARY_LINK = "- [{kind}]({url})"
_SUMMARY_LINK = re.compile(r"^- \[([a-z]+)\]\((\S+?)\)", re.MULTILINE)


def summary_links(summary: str) -> dict[str, str]:
    """The main artefacts' links in a run summary, by kind (``notebook``, ``html``, ``result``...).

    Example:
        >>> summary_links("# report: completed\n- [result](https://s3/r.json) result.json")
        {'result': 'https://s3/r.json'}
    """
    return {kind: url for kind, url in _SUMMARY_LINK.findall(summary)}


class Repaired(BaseModel):
    """What a repair continued: the failed run, the cell it went on from, and how."""

    flow_run_id: str
    from_cell: int
    mode: Literal["warm", "cold"] = Field(
        description=(
            "warm: the failed run's kernel, kept alive, ran the rest; cold: the cells "
            "before were run again first (marked re_executed)."
        )
    )


class SlurmInfo(BaseModel):
    """What Slurm says about the job that ran the notebook."""

    job_id: str
    state: str
    exit_code: int | None = None
    node: str | None = None
    attempts: int = 1
    stdout: str = ""
    stderr_tail: str = ""
    max_rss_bytes: int | None = Field(
        default=None, description="sacct's MaxRSS: the job's highest resident memory."
    )


class ExecutionOutcome(BaseModel):
    """What an executor hands back: the execute step's report, and the job's facts."""

    report: ExecutionReport
    logs: dict[str, str] = Field(
        default_factory=dict,
        description="Artefact name -> local file: a Slurm job's output and its folder's zip.",
    )
    slurm: SlurmInfo | None = None


class Timings(BaseModel):
    """Where the time of a run went, in seconds."""

    started_at: datetime
    finished_at: datetime
    total_seconds: float
    stage_seconds: float = 0.0
    kernel_start_seconds: float | None = None
    execute_seconds: float = 0.0
    store_seconds: float = 0.0


class RunContext(BaseModel):
    """What a run is: the values a notebook can ask for (``# nbjobs: logical_date``).

    A scheduled run's times are its tick's, in its schedule's time zone; a backfill
    run's, the tick it makes; a run started by hand, when it was asked for. A retry
    keeps them (Prefect keeps a run's expected start time across its attempts).
    """

    logical_date: str = Field(description="The date the run is for, YYYY-MM-DD.")
    scheduled_time: str = Field(description="The tick the run is for, ISO 8601 with offset.")
    timezone: str = Field(description="The time zone of the two above (the schedule's).")
    trigger: str = Field(description="schedule, backfill, api, ui, cli or batch.")
    attempt: int = Field(default=1, description="1, then 2 for the first retry...")
    run_id: str | None = None
    deployment: str | None = Field(default=None, description="run-notebook/NAME, if any.")
    run_url: str | None = Field(default=None, description="The run's page in the Prefect UI.")


class CacheInfo(BaseModel):
    """How a run with ``cache`` on used the cache."""

    key: str = Field(description="The cache key: a SHA-256 of everything the run depends on.")
    hit: bool = Field(description="True when this run reused a completed run's result.")
    fingerprint: str = Field(description="The environment fingerprint, and where it came from.")
    expires_at: datetime | None = Field(
        default=None, description="When the cached result stops being reused."
    )


ParameterSource = Literal["run", "deployment", "notebook", "context"]


class NotebookResult(BaseModel):
    """The result of a run; ``result.json`` in the store is this document."""

    success: bool
    status: RunStatus
    notebook: str = Field(description="The notebook's name.")
    flow_run_id: str | None = None
    flow_name: str = "run-notebook"
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="What the run was given (and its deployment's)."
    )
    parameters_used: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "What the notebook ran with: its own defaults (those written as literals), "
            "overridden by the parameters given."
        ),
    )
    parameters_from: dict[str, ParameterSource] = Field(
        default_factory=dict,
        description=(
            "Where each value of ``parameters_used`` came from: ``run`` (set for this run), "
            "``deployment`` (its deployment's default), ``notebook`` (the notebook's own) or "
            "``context`` (a value of the run the notebook asked for: ``# nbjobs: logical_date``)."
        ),
    )
    deployment: str | None = Field(default=None, description="The run's deployment, if any.")
    context: RunContext | None = Field(
        default=None, description="What the run is: its logical date, trigger, attempt..."
    )
    kernel: str
    error: ErrorInfo | None = None
    cells: list[CellReport] = Field(default_factory=list)
    outputs: dict[str, Any] = Field(default_factory=dict)
    artefacts: Artefacts
    timings: Timings
    resources: Resources = Field(default_factory=Resources)
    slurm: SlurmInfo | None = None
    notes: list[str] = Field(default_factory=list)
    cached_from: str | None = Field(
        default=None,
        description="The flow run whose result and artefacts this cached run returns.",
    )
    cache: CacheInfo | None = None
    repaired_from: Repaired | None = Field(
        default=None, description="The failed run this run repairs, and how."
    )


def error_for_result(result: NotebookResult) -> NotebookRunError | SlurmJobError:
    """The typed error a run that did not succeed ends with; it carries the result."""
    document = result.model_dump(mode="json")
    error = result.error or ErrorInfo(name=result.status, message=f"the run ended {result.status}")
    if result.slurm is not None and error.name == "SlurmJobError":
        slurm_error = SlurmJobError
        if result.slurm.state in ("NODE_FAIL", "PREEMPTED", "BOOT_FAIL"):
            slurm_error = SlurmNodeFailureError
        return slurm_error(
            f"{error.name}: {error.message}",
            job_id=result.slurm.job_id,
            state=result.slurm.state,
            exit_code=result.slurm.exit_code,
            stderr_tail=result.slurm.stderr_tail,
            cell_index=error.cell_index,
            result=document,
        )
    if result.status == "timed_out":
        return NotebookTimeoutError(
            f"{error.name}: {error.message}",
            timeout_seconds=0.0,
            cell_index=error.cell_index,
            result=document,
        )
    if result.status == "kernel_died":
        return KernelDiedError(
            f"{error.name}: {error.message}", cell_index=error.cell_index, result=document
        )
    if error.name == "MemoryLimitError":
        return MemoryLimitError(
            error.message,
            cell_index=error.cell_index,
            traceback=error.traceback.splitlines(),
            result=document,
        )
    return NotebookExecutionError(
        error.name,
        error.message,
        cell_index=error.cell_index,
        traceback=error.traceback.splitlines(),
        result=document,
    )
