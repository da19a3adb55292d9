"""The executed notebook as Markdown for the UI (pure)."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from notebook_jobs.tasks.engine.notebook_markdown import (
    MAX_INLINE_IMAGE_BYTES,
    MAX_INLINE_TOTAL_BYTES,
    MAX_OUTPUT_CHARS,
    html_table_markdown,
    notebook_markdown,
)

pytestmark = pytest.mark.unit

FRAME = (
    '<table border="1" class="dataframe"><thead><tr><th></th><th>i</th><th>square</th></tr>'
    "</thead><tbody><tr><th>0</th><td>0</td><td>0</td></tr>"
    "<tr><th>1</th><td>1</td><td>1</td></tr></tbody></table>"
)


def test_a_dataframe_becomes_a_markdown_table() -> None:
    assert (
        html_table_markdown(FRAME)
        == "|  | i | square |\n|---|---|---|\n| 0 | 0 | 0 |\n| 1 | 1 | 1 |"
    )
    assert html_table_markdown("<p>no table</p>") is None


def test_cells_outputs_images_and_cuts() -> None:
    code = new_code_cell("print('x' * 5000)", execution_count=2)
    code.outputs = [new_output("stream", name="stdout", text="x" * 5000)]
    code.metadata["nbjobs"] = {"index": 1, "status": "ok"}
    plot = new_code_cell("plt.show()", execution_count=3)
    plot.outputs = [
        new_output("display_data", data={"image/png": "iVBO", "text/plain": "<Figure>"})
    ]
    plot.metadata["nbjobs"] = {"index": 2, "status": "ok"}
    frame = new_code_cell("df", execution_count=4)
    frame.outputs = [new_output("execute_result", data={"text/html": FRAME}, execution_count=4)]
    frame.metadata["nbjobs"] = {"index": 3, "status": "ok"}
    nb = new_notebook(cells=[new_markdown_cell("# Title"), code, plot, frame])
    nb.cells[0].metadata["nbjobs"] = {"index": 0}
    text = notebook_markdown(
        nbformat.from_dict(nb), links={(2, 0): "https://store.example/cell-2-0.png"}
    )
    assert text.startswith("#### Title")  # under the summary's own headings
    assert "#### cell 1 · ok · In[2]" in text
    assert "x" * MAX_OUTPUT_CHARS + "\n... (2,000 more characters in the stored notebook)" in text
    # a small image is in the summary itself: it opens from any machine, after any restart
    assert "![cell 2, output 0](data:image/png;base64,iVBO)" in text
    assert "| 1 | 1 | 1 |" in text
    # a large one is linked where the store gives a browser link, else named
    big = "A" * (MAX_INLINE_IMAGE_BYTES + 4)
    plot.outputs = [new_output("display_data", data={"image/png": big})]
    nb = new_notebook(cells=[plot])
    linked = notebook_markdown(
        nbformat.from_dict(nb), links={(2, 0): "https://store.example/cell-2-0.png"}
    )
    assert "![cell 2, output 0](https://store.example/cell-2-0.png)" in linked
    local = notebook_markdown(nbformat.from_dict(nb), links={(2, 0): "file:///runs/cell-2-0.png"})
    assert "opens on the store's machine" in local and "![" not in local


def test_embedded_images_stop_at_the_budget_and_do_not_count_as_text() -> None:
    image = "B" * (MAX_INLINE_IMAGE_BYTES - 10)
    cells = []
    for index in range(8):  # 8 x 200 KB: more than the 1 MB embedded in one summary
        cell = new_code_cell("plot()", execution_count=index + 1)
        cell.outputs = [new_output("display_data", data={"image/png": image})]
        cell.metadata["nbjobs"] = {"index": index, "status": "ok"}
        cells.append(cell)
    text = notebook_markdown(nbformat.from_dict(new_notebook(cells=cells)))
    embedded = text.count("](data:image/png;base64,")
    assert embedded == MAX_INLINE_TOTAL_BYTES // len(image)
    # every cell is there: the images do not use up the text's budget
    assert all(f"#### cell {index} · ok" in text for index in range(8))
    assert text.count("an image: in the stored notebook") == 8 - embedded
