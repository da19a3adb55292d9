"""The one error hierarchy of notebook-jobs.

Every error we raise on purpose is a ``NotebookJobError``; callers can catch the
base class, or the branch they care about::

    NotebookJobError
    ├── NotebookInputError            bad input, refused before any kernel starts
    │   ├── NotebookFormatError       not JSON, not a notebook, invalid nbformat
    │   ├── NotebookNotFoundError     missing file, unreachable URL or object
    │   ├── UnknownKernelError        kernel not installed (lists installed ones)
    │   ├── UnknownParameterError     parameter not declared (lists declared ones)
    │   ├── ParameterValueError       value cannot be carried as JSON
    │   ├── CellSelectionError        ``cells`` names no cell, or a cell out of range
    │   ├── WorkingFolderError        ``cwd`` is not a folder here, or not for Slurm
    │   ├── SlurmClusterError         no such SlurmCluster block, or one with bad values
    │   ├── RequestTooLargeError      a notebook or parameters over their limits
    │   ├── FixedParameterError       a caller set what the deployment fixes
    │   ├── SecretParameterError      a secret reference names no Secret block, or a
    │   │                             parameter declared secret was sent as a value
    │   ├── AlertConditionError       an alert's condition cannot be read
    │   └── OptionError               a command-line option that cannot work as given
    ├── NotebookRunError              a kernel ran; ``result`` holds what was kept
    │   ├── NotebookExecutionError    the notebook raised (cell index, name, value)
    │   │   └── MemoryLimitError      a cell reached the run's memory limit and was stopped
    │   ├── NotebookTimeoutError      per-cell or whole-run timeout (also TimeoutError)
    │   ├── KernelDiedError           the kernel process died (retryable)
    │   │   └── KernelStartError      the kernel could not start, or never answered
    │   └── RunCancelledError         the run was cancelled; what ran is kept
    ├── BatchError                    items of a batch failed (``batch`` holds them all)
    ├── ArtefactStoreError            the store is unreachable or refused a write
    ├── LocalServerError              the local Prefect server or its worker cannot start
    ├── EndpointServerError           the endpoints' Kernel Gateway stopped or never listened
    ├── ForkServerError               the fork server cannot fork (the kernel is spawned)
    ├── APIError                      Prefect's API refused, or did not answer in time
    ├── SettingsError                 an NBJOBS_* variable holds a value it cannot take
    └── SlurmError
        ├── SlurmSubmissionError      sbatch/sacct unreachable or refused the job
        └── SlurmJobError             the job ended FAILED, TIMEOUT, OUT_OF_MEMORY, CANCELLED...
            └── SlurmNodeFailureError NODE_FAIL, PREEMPTED, BOOT_FAIL (resubmitted)

Errors carry their facts as attributes, not only in the message, and are
translated at the boundary with the cause kept (``raise X(...) from e``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class NotebookJobError(Exception):
    """Base class of every error notebook-jobs raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword-only attributes across pickling (Prefect persists exceptions
        # as results); the default reduce would call __init__ with args alone.
        return (_rebuild, (type(self), self.args, self.__dict__))


# --- bad input ------------------------------------------------------------------


class NotebookInputError(NotebookJobError):
    """The request cannot run as given; nothing was executed."""


class NotebookFormatError(NotebookInputError):
    """The notebook is not valid JSON, or not a Jupyter notebook."""

    def __init__(self, message: str, *, source: str = "") -> None:
        super().__init__(message)
        self.source = source


class NotebookNotFoundError(NotebookInputError):
    """The notebook (or an input file) could not be read from where it was said to be."""

    def __init__(self, message: str, *, source: str = "") -> None:
        super().__init__(message)
        self.source = source


class UnknownKernelError(NotebookInputError):
    """The requested kernel is not installed where the notebook would run."""

    def __init__(self, kernel: str, installed: list[str]) -> None:
        listed = ", ".join(sorted(installed)) or "none"
        super().__init__(
            f"kernel {kernel!r} is not installed; installed kernels: {listed}. "
            "Pass kernel=<one of them>, or install the kernel "
            "(python -m ipykernel install --user --name NAME)."
        )
        self.kernel = kernel
        self.installed = sorted(installed)


class UnknownParameterError(NotebookInputError):
    """A parameter was given that the notebook's ``parameters`` cell does not declare."""

    def __init__(self, unknown: list[str], declared: list[str]) -> None:
        names = ", ".join(repr(n) for n in unknown)
        if declared:
            hint = "declared parameters: " + ", ".join(declared)
        else:
            hint = "the notebook declares no parameters (it has no cell tagged 'parameters')"
        super().__init__(f"unknown parameter(s) {names}; {hint}.")
        self.unknown = unknown
        self.declared = declared


class ParameterValueError(NotebookInputError):
    """A parameter value cannot be carried as JSON to the kernel."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"parameter {name!r}: {problem}")
        self.name = name
        self.problem = problem


class CellSelectionError(NotebookInputError):
    """The ``cells`` selection is malformed or selects cells that do not exist."""


class WorkingFolderError(NotebookInputError):
    """The requested working folder (``cwd``) cannot be used."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class SlurmClusterError(NotebookInputError):
    """The run names a ``SlurmCluster`` block that does not exist or cannot be used.

    Attributes:
        name: The block's name.
    """

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class RequestTooLargeError(NotebookInputError):
    """A notebook or its parameters are over a limit (``what``: ``size`` > ``limit``)."""

    def __init__(self, what: str, size: int, limit: int, unit: str = "bytes") -> None:
        super().__init__(f"{what} is {size:,} {unit}, over the limit of {limit:,} {unit}")
        self.what = what
        self.size = size
        self.limit = limit


class FixedParameterError(NotebookInputError):
    """A run of a notebook deployment set a parameter its deployer fixed."""

    def __init__(self, name: str, deployment: str) -> None:
        super().__init__(
            f"{name!r} is fixed by the deployment {deployment!r}; its deployer can open it "
            f"with `nbjobs deploy ... --allow {name}`"
        )
        self.name = name
        self.deployment = deployment


class SecretParameterError(NotebookInputError):
    """A secret parameter cannot be resolved, or a declared secret came as a plain value."""

    def __init__(self, message: str, *, parameter: str, block: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.block = block


class AlertConditionError(NotebookInputError):
    """An alert condition (``outputs.error_rate > 0.05``) that cannot be read."""

    def __init__(self, message: str, *, condition: str) -> None:
        super().__init__(message)
        self.condition = condition


class OptionError(NotebookInputError):
    """A command-line option that cannot work as given (a YAML value that does not
    parse, two options that exclude each other); said in one line before any run."""


# --- a kernel ran ----------------------------------------------------------------


class NotebookRunError(NotebookJobError):
    """A kernel ran the notebook and the run did not succeed.

    Attributes:
        cell_index: The cell that was running, if one was.
        execution: What the execute step gave (``ExecutionOutcome`` as a dict), when
            the error is raised before the artefacts are stored (the flow stores them).
        result: The run's result document (``NotebookResult`` as a dict) once the
            artefacts are stored, so a caller always finds the partial notebook.
    """

    status = "failed"

    def __init__(
        self,
        message: str,
        *,
        cell_index: int | None = None,
        execution: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.cell_index = cell_index
        self.execution = execution
        self.result = result


def _rebuild(cls: type[Exception], args: tuple[Any, ...], state: dict[str, Any]) -> Exception:
    error = Exception.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class NotebookExecutionError(NotebookRunError):
    """A cell of the notebook raised an exception."""

    def __init__(
        self,
        ename: str,
        evalue: str,
        *,
        cell_index: int | None,
        traceback: list[str] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        # the cell first: a state message is cut in lists and tables, and Prefect puts
        # "Flow run encountered an exception: NotebookExecutionError: " before it
        where = f"cell {cell_index}: " if cell_index is not None else ""
        super().__init__(f"{where}{ename}: {evalue}", cell_index=cell_index, result=result)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback or []


class MemoryLimitError(NotebookExecutionError):
    """A cell reached the run's memory limit: it was interrupted (its kernel killed if it
    did not stop) before the machine's OOM killer could take the kernel.

    ``str()``: ``MemoryLimitError: cell 4 used 2.1 GiB of its 2 GiB limit``.
    """

    def __init__(
        self,
        message: str,
        *,
        cell_index: int | None,
        traceback: list[str] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            "MemoryLimitError", message, cell_index=cell_index, traceback=traceback, result=result
        )
        self.args = (f"MemoryLimitError: {message}",)  # the message names the cell itself


class NotebookTimeoutError(NotebookRunError, TimeoutError):
    """A cell, or the whole run, exceeded its time limit."""

    status = "timed_out"

    def __init__(
        self,
        message: str,
        *,
        timeout_seconds: float,
        cell_index: int | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, cell_index=cell_index, result=result)
        self.timeout_seconds = timeout_seconds


class KernelDiedError(NotebookRunError):
    """The kernel process died while running a cell; a retry may succeed."""

    status = "kernel_died"


class KernelStartError(KernelDiedError):
    """The kernel could not start, or did not answer in time; a retry may succeed."""


class RunCancelledError(NotebookRunError):
    """The run was cancelled (its flow run, or SIGTERM to its Slurm job).

    Raised by the execute step with ``execution`` set: the flow stores the partial
    notebook and ends Cancelled. Not a ``CancelledError``: asyncio's cancellation
    ends where it is translated into this.
    """

    status = "cancelled"


class BatchError(NotebookJobError):
    """Items of a ``run-notebooks`` batch did not succeed.

    Attributes:
        batch: The batch's outcome (``BatchResult`` as a dict): every item, with the
            result document of each run.
    """

    def __init__(self, message: str, *, batch: dict[str, Any]) -> None:
        super().__init__(message)
        self.batch = batch


# --- infrastructure -------------------------------------------------------------


class ArtefactStoreError(NotebookJobError):
    """The artefact store could not be reached or refused an operation."""

    def __init__(
        self, message: str, *, store: str = "", result: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.store = store
        self.result = result  # the run's result, when a run could not store its artefacts


class LocalServerError(NotebookJobError):
    """The local Prefect server or its worker could not be started or reached.

    Attributes:
        log: The log file that says more, if any.
    """

    def __init__(self, message: str, *, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


class EndpointServerError(NotebookJobError):
    """The Kernel Gateway serving a notebook's endpoints stopped, or never listened.

    Attributes:
        output: The gateway's last lines of output.
    """

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class ForkServerError(NotebookJobError):
    """The fork server could not start, or could not fork a kernel: the kernel is
    started the usual way instead, so a run never fails for it."""


class APIError(NotebookJobError):
    """Prefect's API answered with an error status (after retries), or could not be reached.

    Attributes:
        status_code: The HTTP status, or ``None`` when nothing answered.
        body: The response body (Prefect's ``detail``), if any.
        again: Asking again may succeed, and cannot do anything twice.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: str = "",
        again: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.again = again


class SettingsError(NotebookJobError):
    """An ``NBJOBS_*`` environment variable holds a value its setting cannot take.

    Attributes:
        variable: The variable's name.
        value: The value it holds.
    """

    def __init__(self, message: str, *, variable: str, value: str) -> None:
        super().__init__(message)
        self.variable = variable
        self.value = value


class SlurmError(NotebookJobError):
    """Base class of Slurm submission and job errors."""


class SlurmSubmissionError(SlurmError):
    """The job could not be submitted or followed: no sbatch, no controller, refused."""


class SlurmJobError(SlurmError):
    """A Slurm job ended without running the notebook to its end.

    Attributes:
        job_id: The Slurm job id.
        state: Slurm's final state (``TIMEOUT``, ``OUT_OF_MEMORY``...).
        exit_code: The job's exit code, if Slurm reported one.
        stderr_tail: The last lines the job wrote to stderr.
        result: The run's result document, once the artefacts are stored.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        state: str,
        exit_code: int | None = None,
        stderr_tail: str = "",
        cell_index: int | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.cell_index = cell_index
        self.result = result


class SlurmNodeFailureError(SlurmJobError):
    """The node failed or the job was preempted; a resubmission may succeed."""
