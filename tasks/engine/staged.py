"""A staged run: the request fetched, checked and parameterised, in its run folder.

``stage`` does everything that can refuse a request before any kernel starts; what
it returns is all an executor needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbformat import NotebookNode
from papermill.translators import translate_parameters

from notebook_jobs.blocks.exceptions import SecretParameterError, WorkingFolderError
from notebook_jobs.tasks.engine.fetch import (
    display_name,
    fetch_notebook_source,
    parse_notebook,
    stage_input_files,
)
from notebook_jobs.tasks.engine.kernels.client import ensure_kernel_installed
from notebook_jobs.tasks.engine.layout import INPUT_NAME, WORK_FOLDER
from notebook_jobs.tasks.engine.parameters import notebook_language
from notebook_jobs.tasks.engine.run_context import run_values
from notebook_jobs.tasks.engine.secrets import (
    MASK,
    RunSecrets,
    declared_secrets,
    reference,
    refuse_plain_secrets,
    secret_reference,
)
from notebook_jobs.tasks.engine.staging import (
    check_parameters,
    inject_parameters,
    kernel_name_of,
    notebook_defaults,
    select_cells,
)
from notebook_jobs.tasks.models import NotebookRequest


class StagedNotebook:
    """A checked, parameterised notebook ready to execute, and its run folder.

    A plain class on purpose: Prefect walks dataclasses and models passed between
    tasks, which would copy the whole notebook on every call.
    """

    def __init__(
        self,
        *,
        name: str,
        origin: str,
        kernel: str,
        notebook: NotebookNode,
        cell_origin: list[int | None],
        selected: set[int] | None,
        run_dir: Path,
        cwd: Path | None = None,
        start_timeout_seconds: float | None = None,
        memory_limit_bytes: int | None = None,
        repair_from_cell: int | None = None,
        repair_of: str | None = None,
        keep_failed_seconds: float | None = None,
        notes: list[str] | None = None,
        parameters: dict[str, Any] | None = None,
        secrets: RunSecrets | None = None,
        input_names: list[str] | None = None,
        context: dict[str, Any] | None = None,
        from_context: list[str] | None = None,
    ) -> None:
        self.name = name
        self.origin = origin
        self.kernel = kernel
        self.notebook = notebook
        self.cell_origin = cell_origin
        self.selected = selected
        self.run_dir = run_dir
        self.cwd = cwd
        self.start_timeout_seconds = start_timeout_seconds
        self.memory_limit_bytes = memory_limit_bytes
        self.repair_from_cell = repair_from_cell  # a repair goes on from this cell
        self.repair_of = repair_of  # ... of this failed run
        self.keep_failed_seconds = keep_failed_seconds  # its kernel, if it fails: kept so long
        self.run_id: str | None = None  # its flow run's, once known (a kept kernel's key)
        self.kernel_kept = False  # its kernel was kept alive for a repair (its folder too)
        self.notes = notes or []
        # what was injected, secrets as references (a `# secret: block` default included)
        self.parameters = parameters or {}
        self.secrets = secrets
        self.input_names = input_names or []  # the input files' names in the working folder
        self.context = context  # the run's (RunContext as JSON)
        self.from_context = from_context or []  # the parameters filled in from it

    def parameters_used(self) -> dict[str, Any]:
        """The notebook's literal defaults overridden by what was injected.

        A name declared ``# secret`` shows only as a reference: without one, its literal
        default is left out (sent back by a retry, it would be refused as a value).
        """
        used = {**notebook_defaults(self.notebook, self.kernel), **self.parameters}
        for name in declared_secrets(self.notebook):
            if secret_reference(used.get(name)) is None:
                used.pop(name, None)
        return used

    @property
    def cells_to_run(self) -> int:
        """The input notebook's code cells this run executes: the total in each cell's
        log line (``cell 3 (3/12)``); the injected parameters cell is not counted."""
        return sum(
            1
            for cell, origin in zip(self.notebook.cells, self.cell_origin, strict=True)
            if cell.cell_type == "code"
            and origin is not None
            and (self.selected is None or origin in self.selected)
        )

    def __repr__(self) -> str:
        return f"StagedNotebook(name={self.name!r}, kernel={self.kernel!r}, run_dir={self.run_dir})"

    @property
    def workdir(self) -> Path:
        """The kernel's working folder: ``cwd`` if one was asked for, else the run's own."""
        return self.cwd or self.files_dir

    @property
    def files_dir(self) -> Path:
        """Where the files the run wrote are kept for the store: the run's own folder."""
        return self.run_dir / WORK_FOLDER


SecretResolver = Callable[[str, str], Any]  # (parameter, block) -> the Secret block's value


def stage(
    request: NotebookRequest,
    run_dir: Path,
    *,
    check_kernel: bool = True,
    resolve: SecretResolver | None = None,
    context: dict[str, Any] | None = None,
) -> StagedNotebook:
    """Fetch, check and parameterise a notebook; write ``input.ipynb`` to ``run_dir``.

    Args:
        request: The run's request.
        run_dir: The run's folder.
        check_kernel: Check that the kernel is installed here.
        resolve: Loads a Secret block's value, for secret parameters.
        context: The run's context (``RunContext`` as JSON): the values the parameters
            cell asks for (``# nbjobs: logical_date``) and the caller did not set.

    Raises:
        NotebookInputError: Anything about the request that must be fixed first.
    """
    source = fetch_notebook_source(request.notebook)
    nb = parse_notebook(source)
    kernel = kernel_name_of(nb, request.kernel)
    cwd = working_folder(request.cwd)
    if check_kernel:
        ensure_kernel_installed(kernel)
    parameters = with_declared_secrets(nb, request.parameters)
    filled = run_values(nb, parameters, context)
    parameters.update(filled)
    # the notebook shows MASK where a secret goes; the kernel runs the value
    shown = {name: MASK if secret_reference(v) else v for name, v in parameters.items()}
    notes = check_parameters(
        nb, shown, kernel, language=request.language, strict=request.strict_parameters
    )
    selected = select_cells(nb, request.cells)
    parameterised, cell_origin = inject_parameters(
        nb,
        shown,
        kernel,
        language=request.language,
        report_mode=request.report_mode,
    )
    parameterised.metadata.papermill["parameters"] = parameters
    parameterised.metadata.papermill["input_path"] = source.origin
    secrets = resolve_secrets(parameters, resolve)
    if secrets is not None:
        language = request.language or notebook_language(nb)
        position = cell_origin.index(None)  # the injected cell
        secrets.sources[position] = translate_parameters(
            kernel, language, {**shown, **secrets.values}, "Parameters"
        )
    (run_dir / WORK_FOLDER).mkdir(parents=True, exist_ok=True)
    inputs = stage_input_files(
        request.input_files, cwd or run_dir / WORK_FOLDER, replace=cwd is None
    )
    (run_dir / INPUT_NAME).write_bytes(source.data)
    return StagedNotebook(
        name=display_name(request.notebook, request.name) if request.name else source.name,
        origin=source.origin,
        kernel=kernel,
        notebook=parameterised,
        cell_origin=cell_origin,
        selected=selected,
        run_dir=run_dir,
        cwd=cwd,
        start_timeout_seconds=request.start_timeout_seconds,
        memory_limit_bytes=request.memory_limit_bytes,
        repair_from_cell=((request.from_cell or 0) if request.repair_of is not None else None),
        repair_of=request.repair_of,
        keep_failed_seconds=request.keep_failed_kernel_seconds,
        notes=notes,
        parameters=parameters,
        secrets=secrets,
        input_names=inputs,
        context=context,
        from_context=list(filled),
    )


def with_declared_secrets(nb: NotebookNode, given: dict[str, Any]) -> dict[str, Any]:
    """The parameters with the notebook's declared secrets checked and defaulted.

    A name the notebook declares ``# secret: block`` and the caller leaves out refers
    to that block.

    Raises:
        SecretParameterError: A declared secret was sent as a plain value: it would be
            in the flow run's parameters, in Prefect's database.
    """
    refuse_plain_secrets(nb, given)
    parameters = dict(given)
    for name, block in declared_secrets(nb).items():
        if name not in parameters and block:
            parameters[name] = reference(block)
    return parameters


def resolve_secrets(
    parameters: dict[str, Any], resolve: SecretResolver | None
) -> RunSecrets | None:
    """Load the values of the secret parameters; ``None`` when there are none.

    Raises:
        SecretParameterError: No resolver here (nothing to load Secret blocks from).
    """
    references = {n: secret_reference(v) for n, v in parameters.items() if secret_reference(v)}
    if not references:
        return None
    if resolve is None:
        name = next(iter(references))
        raise SecretParameterError(
            f"parameter {name!r} refers to a Secret block, which only a run on a Prefect "
            "server can load",
            parameter=name,
            block=references[name],
        )
    return RunSecrets({name: resolve(name, str(block)) for name, block in references.items()})


def working_folder(cwd: str | None) -> Path | None:
    """The requested working folder, checked; ``None`` for the run's own fresh folder.

    Raises:
        WorkingFolderError: It is not a folder on this machine.
    """
    if cwd is None:
        return None
    folder = Path(cwd).expanduser()
    if not folder.is_dir():
        raise WorkingFolderError(
            f"cwd {cwd!r} is not a folder on the machine that runs the notebook", path=cwd
        )
    return folder.resolve()
