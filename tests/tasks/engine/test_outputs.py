from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from notebook_jobs.tasks.engine.outputs import read_scraps

pytestmark = pytest.mark.unit


def scrap_output(name: str, data: object, encoder: str = "json") -> nbformat.NotebookNode:
    # Exactly what scrapbook 0.5.0's sb.glue(name, data) writes.
    return new_output(
        "display_data",
        data={
            f"application/scrapbook.scrap.{encoder}+json": {
                "name": name,
                "data": data,
                "encoder": encoder,
                "version": 1,
            }
        },
        metadata={"scrapbook": {"name": name, "data": True, "display": False}},
    )


def test_scrapbook_glue_outputs_are_read_and_later_glues_win() -> None:
    first = new_code_cell(outputs=[scrap_output("total", 10), scrap_output("rows", [1, 2])])
    second = new_code_cell(outputs=[scrap_output("total", 11)])
    outputs, notes = read_scraps(new_notebook(cells=[first, second]))
    assert outputs == {"total": 11, "rows": [1, 2]} and notes == []


def test_unsupported_encoders_are_noted_not_guessed() -> None:
    cell = new_code_cell(outputs=[scrap_output("frame", "<binary>", encoder="pandas")])
    outputs, notes = read_scraps(new_notebook(cells=[cell]))
    assert outputs == {} and "encoder 'pandas'" in notes[0]
