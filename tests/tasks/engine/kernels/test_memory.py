"""Memory per cell, and the memory limit, against a real ipykernel (no Prefect).

``grows.ipynb`` adds ``step_mib`` of written bytes in each of cells 2 to 6 and holds
them, sleeping ``pause`` seconds after each step.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest

from notebook_jobs.blocks.sizes import parse_size
from notebook_jobs.tasks.engine.execution import execute_notebook_async
from tests.tasks.engine.test_execution import execute

MIB = 1024 * 1024


def test_without_a_limit_each_cell_reports_its_peak_and_cpu(tmp_path: Path) -> None:
    _, report = execute("grows.ipynb", tmp_path, {"step_mib": 100, "pause": 0.1})
    assert report.status == "completed", report.error
    peaks = {c.index: c.peak_memory_bytes for c in report.cells}
    assert all(peak for peak in peaks.values()), peaks
    # each growing cell holds 100 MiB more than the one before
    steps = [peaks[i + 1] - peaks[i] for i in range(2, 6)]  # type: ignore[operator]
    assert all(90 * MIB < step < 110 * MIB for step in steps), [s // MIB for s in steps]
    assert report.resources.peak_memory_bytes >= peaks[6]  # type: ignore[operator]
    # writing 100 MiB takes CPU; a print takes next to none
    cpu = {c.index: c.cpu_seconds for c in report.cells}
    assert all(cpu[i] is not None and cpu[i] > 0 for i in range(2, 7)), cpu  # type: ignore[operator]
    assert cpu[7] is not None and cpu[7] < min(cpu[i] for i in range(2, 7))  # type: ignore[type-var]


def test_the_cell_that_reaches_the_limit_is_stopped_and_named(tmp_path: Path) -> None:
    nb, report = execute(
        "grows.ipynb",
        tmp_path,
        {"step_mib": 100, "pause": 1.0},
        memory_limit_bytes=parse_size("300MiB"),
    )
    assert report.status == "failed"
    error = report.error
    assert error is not None and error.name == "MemoryLimitError"
    # about 50 MiB of kernel, then 100 MiB a cell: cell 4 is the one that reaches 300
    assert error.cell_index == 4
    assert error.message.startswith("cell 4 used ") and error.message.endswith(
        " of its 300 MiB limit"
    )
    assert [c.status for c in report.cells] == ["ok"] * 4 + ["error"] + ["not_run"] * 3
    # interrupted where it was (allocating, or in the second it then sleeps), not killed:
    # the kernel answered, and no OOM killer or SIGKILL came near it
    assert "KeyboardInterrupt" in error.traceback and "in grow()" in error.traceback
    cell = next(c for c in nb.cells if c.metadata.get("nbjobs", {}).get("index") == 4)
    assert cell.outputs[-1]["ename"] == "MemoryLimitError"
    assert cell.outputs[-1]["evalue"] == error.message
    assert nb.metadata["nbjobs"]["error"]["name"] == "MemoryLimitError"


def test_a_peak_between_two_samples_still_counts(tmp_path: Path) -> None:
    """A cell that allocates and frees at once is over the limit all the same: the kernel's
    own high-water mark, reset per cell, saw it."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("spike = b'x' * (400 * 1024 * 1024)\ndel spike"),
        nbformat.v4.new_code_cell("print('after')"),
    ]
    report = asyncio.run(
        execute_notebook_async(
            notebook,
            [0, 1, 2],
            kernel="python3",
            workdir=tmp_path / "work",
            memory_limit_bytes=parse_size("300MiB"),
        )
    )
    assert report.error is not None and report.error.name == "MemoryLimitError"
    assert report.error.cell_index == 1
    assert report.cells[1].peak_memory_bytes >= 400 * MIB  # type: ignore[operator]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "size"),
    [("2GiB", 2 * 1024**3), ("300 MiB", 300 * MIB), ("4G", 4 * 1024**3), ("512MB", 512 * 10**6)],
)
def test_sizes_as_people_write_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.unit
@pytest.mark.parametrize("text", ["", "lots", "2 parsecs", "0GiB", "-1GiB", "300"])
def test_a_size_that_is_none_says_what_one_looks_like(text: str) -> None:
    with pytest.raises(ValueError, match="a size such as 2GiB|has no unit: write 300MiB"):
        parse_size(text)
