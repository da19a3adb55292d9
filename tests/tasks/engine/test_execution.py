"""The execute step against a real ipykernel, without Prefect."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nbformat
import pytest

from notebook_jobs.blocks.exceptions import UnknownKernelError
from notebook_jobs.tasks.engine.cells import CellEvent
from notebook_jobs.tasks.engine.execution import execute_notebook_async
from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
from notebook_jobs.tasks.engine.staging import inject_parameters, select_cells
from notebook_jobs.tasks.models import ExecutionReport
from tests.conftest import DATA


def execute(
    name: str, tmp_path: Path, parameters: dict[str, Any] | None = None, **options: Any
) -> tuple[nbformat.NotebookNode, ExecutionReport]:
    nb = parse_notebook(fetch_notebook_source(str(DATA / name)))
    cells = options.pop("cells", None)
    nb, origin = inject_parameters(nb, parameters or {}, "python3")
    selected = select_cells(parse_notebook(fetch_notebook_source(str(DATA / name))), cells)
    options.setdefault("kernel", "python3")
    report = asyncio.run(
        execute_notebook_async(nb, origin, workdir=tmp_path / "work", selected=selected, **options)
    )
    return nb, report


def test_parameters_of_every_json_type_reach_the_kernel(tmp_path: Path) -> None:
    parameters = {
        "x": 7,
        "name": 'Zoë "quoted"\nline',
        "ratio": 1e-9,
        "flag": True,
        "items": [1, None, "two", [3]],
        "config": {"nested": {"deep": [True, False]}},
        "nothing": None,
    }
    _, report = execute("params.ipynb", tmp_path, parameters)
    assert report.status == "completed" and report.error is None
    assert report.outputs["echo"] == parameters
    assert report.outputs["cwd"] == str(tmp_path / "work")


def test_a_raising_notebook_reports_the_input_cell_index(tmp_path: Path) -> None:
    nb, report = execute("raises.ipynb", tmp_path, {"fail_at": 3})
    assert report.status == "failed"
    assert report.error is not None
    assert (report.error.name, report.error.message, report.error.cell_index) == (
        "ValueError",
        "bad value 42",
        3,
    )
    assert "ValueError" in report.error.traceback and "\x1b[" not in report.error.traceback
    assert [c.status for c in report.cells] == ["ok", "ok", "ok", "error", "not_run"]
    # the partial notebook keeps the outputs of the cells that ran; papermill's two
    # banners say where it stopped: one at the top, one just before the failed cell
    by_index = {c.metadata.get("nbjobs", {}).get("index"): c for c in nb.cells}
    assert by_index[2].outputs[0]["text"] == "cell 2 ran\n"
    banners = [i for i, c in enumerate(nb.cells) if "papermill-error-cell-tag" in c.metadata.tags]
    assert banners == [0, nb.cells.index(by_index[3]) - 1]
    assert f"In [{by_index[3].execution_count}]" in nb.cells[0].source
    assert "stopped" in nb.cells[banners[1]].source
    assert nb.metadata["nbjobs"]["status"] == "failed"


def test_events_come_before_and_after_each_cell(tmp_path: Path) -> None:
    events: list[CellEvent] = []
    execute("raises.ipynb", tmp_path, on_event=events.append)
    assert [(e.phase, e.index) for e in events][:4] == [
        ("start", 0),
        ("end", 0),
        ("start", 1),
        ("end", 1),
    ]
    assert events[3].stdout == "cell 1 ran\n" and events[-1].report.status == "error"  # type: ignore[union-attr]


def test_only_selected_cells_run(tmp_path: Path) -> None:
    _, report = execute("params.ipynb", tmp_path, cells="1,2")
    assert {c.index: c.status for c in report.cells} == {
        0: "ok",
        1: "ok",
        2: "ok",
        3: "skipped",
        4: "skipped",
    }
    assert "tagged_ran" not in report.outputs and "echo" in report.outputs


def test_sys_exit_zero_is_a_clean_stop(tmp_path: Path) -> None:
    _, report = execute("exits.ipynb", tmp_path, {"code": 0})
    assert report.status == "completed"
    assert [c.status for c in report.cells] == ["ok", "ok", "ok", "not_run"]
    assert "sys.exit(0)" in report.notes[0]


def test_sys_exit_one_fails(tmp_path: Path) -> None:
    _, report = execute("exits.ipynb", tmp_path, {"code": 1})
    assert report.status == "failed" and report.error is not None
    assert (report.error.name, report.error.cell_index) == ("SystemExit", 2)


def test_per_cell_timeout_keeps_earlier_output(tmp_path: Path) -> None:
    nb, report = execute("sleeps.ipynb", tmp_path, {"seconds": 60}, cell_timeout_seconds=2)
    assert report.status == "timed_out" and report.error is not None
    assert report.error.cell_index == 2 and "per-cell timeout of 2 s" in report.error.message
    assert nb.cells[2].outputs[0]["text"] == "started\n"


def test_whole_run_timeout(tmp_path: Path) -> None:
    _, report = execute("sleeps.ipynb", tmp_path, {"seconds": 60}, timeout_seconds=4)
    assert report.status == "timed_out" and report.error is not None
    assert (
        report.error.cell_index == 2
        and "timeout of 4 s while running cell 2" in report.error.message
    )
    assert {c.index: c.status for c in report.cells}[3] == "not_run"


def test_files_the_notebook_writes_are_listed(tmp_path: Path) -> None:
    _, report = execute("writes.ipynb", tmp_path)
    assert report.files == ["plots/a.txt", "summary.txt"]


def test_resources_are_measured(tmp_path: Path) -> None:
    _, report = execute("params.ipynb", tmp_path)
    assert report.resources.peak_memory_bytes and report.resources.peak_memory_bytes > 10_000_000
    assert report.resources.cpu_seconds and report.resources.cpu_seconds > 0
    assert report.kernel_start_seconds and report.kernel_start_seconds > 0


def test_unknown_kernel_is_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(
        UnknownKernelError, match="'nokernel' is not installed; installed kernels: .*python3"
    ):
        execute("params.ipynb", tmp_path, kernel="nokernel")
    assert not (tmp_path / "work").exists()
