"""The executed notebook's HTML: what nbconvert renders, and nothing in the log."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import nbformat
import pytest

from notebook_jobs.tasks.engine.layout import EXECUTED_NAME
from notebook_jobs.tasks.notebook import render_html

pytestmark = pytest.mark.unit


def glued(folder: Path) -> Path:
    """A run folder whose notebook glued a scrap (as scrapbook's ``glue``) and printed."""
    folder.mkdir()
    cell = nbformat.v4.new_code_cell("sb.glue('total', total)\nprint('printed')")
    scrap = {"name": "total", "data": 48151623, "encoder": "json", "version": 1}
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={"application/scrapbook.scrap.json+json": scrap},
            metadata={"scrapbook": {"name": "total", "data": True, "display": False}},
        ),
        nbformat.v4.new_output("stream", name="stdout", text="printed\n"),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    nbformat.write(notebook, folder / EXECUTED_NAME)
    return folder


def test_glued_scraps_render_as_nothing_and_warn_nothing_from_runs_at_once(
    tmp_path: Path,
) -> None:
    """nbconvert warned for each scrap (its mimetype has no HTML form). The warning was
    hidden by ``warnings.catch_warnings``, which is not thread-safe: with runs rendering
    at once, it reached the worker's log."""
    folders = [glued(tmp_path / f"run{n}") for n in range(6)]
    rendered: list[Path | None] = []

    def render(folder: Path) -> None:
        for _ in range(5):
            rendered.append(render_html(folder))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=render, args=(f,)) for f in folders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # (garbage collection in the same moment may add other tests' ResourceWarnings)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    assert len(rendered) == 30 and all(rendered)
    html = (folders[0] / "notebook.html").read_text()
    assert "printed" in html and "48151623" not in html
    # the stored notebook keeps its scrap: only the HTML leaves it out
    stored = nbformat.read(folders[0] / EXECUTED_NAME, as_version=4)
    assert "application/scrapbook.scrap.json+json" in stored.cells[0].outputs[0]["data"]
