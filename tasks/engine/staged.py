"""A staged run: the request fetched, checked and parameterised, in its run folder.

``stage`` does everything that can refuse a request before any kernel starts; what
it returns is all an executor needs.
"""

from __future__ import annotations

from pathlib import Path

from nbformat import NotebookNode

from notebook_jobs.blocks.exceptions import WorkingFolderError
from notebook_jobs.tasks.engine.fetch import (
    display_name,
    fetch_notebook_source,
    parse_notebook,
    stage_input_files,
)
from notebook_jobs.tasks.engine.kernels.client import ensure_kernel_installed
from notebook_jobs.tasks.engine.layout import INPUT_NAME, WORK_FOLDER
from notebook_jobs.tasks.engine.staging import (
    check_parameters,
    inject_parameters,
    kernel_name_of,
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
        notes: list[str] | None = None,
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
        self.notes = notes or []

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


def stage(request: NotebookRequest, run_dir: Path, *, check_kernel: bool = True) -> StagedNotebook:
    """Fetch, check and parameterise a notebook; write ``input.ipynb`` to ``run_dir``.

    Raises:
        NotebookInputError: Anything about the request that must be fixed first.
    """
    source = fetch_notebook_source(request.notebook)
    nb = parse_notebook(source)
    kernel = kernel_name_of(nb, request.kernel)
    cwd = working_folder(request.cwd)
    if check_kernel:
        ensure_kernel_installed(kernel)
    notes = check_parameters(
        nb,
        request.parameters,
        kernel,
        language=request.language,
        strict=request.strict_parameters,
    )
    selected = select_cells(nb, request.cells)
    parameterised, cell_origin = inject_parameters(
        nb,
        request.parameters,
        kernel,
        language=request.language,
        report_mode=request.report_mode,
    )
    parameterised.metadata.papermill["input_path"] = source.origin
    (run_dir / WORK_FOLDER).mkdir(parents=True, exist_ok=True)
    stage_input_files(request.input_files, cwd or run_dir / WORK_FOLDER, replace=cwd is None)
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
        notes=notes,
    )


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
