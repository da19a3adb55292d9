"""Papermill as the oracle: what a reader compares between its run and ours.

``seen`` is what a reader of an executed notebook compares; ``papermill_seen`` runs a
notebook through papermill in this process, for the tests whose other side is not
the command line (a pooled kernel, a Slurm job). ``NOTEBOOKS`` are the notebooks of
other languages than Python (``tests/data/make_notebooks.py``), whose kernels
``tests/services/kernels.sh`` installs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat

from tests.conftest import DATA

BANNER_TAG = "papermill-error-cell-tag"
# kernel name -> its test notebook
NOTEBOOKS = {"bash": DATA / "bash.ipynb", "ir": DATA / "r.ipynb"}
# as ``-p`` gives them: a quote and a non-ASCII letter in the string
PARAMETERS: dict[str, Any] = {"name": "Zoë d'Arc", "count": 3, "ratio": 0.25, "flag": True}


def seen(nb: Any) -> list[Any]:
    """What a reader of the executed notebook compares: each code cell's source when it
    is the injected one, and its outputs; where papermill's error banners are."""
    cells: list[Any] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            if BANNER_TAG in cell.metadata.get("tags", []):
                cells.append(("banner", cell.source))
            continue
        injected = "injected-parameters" in cell.metadata.get("tags", [])
        outputs = []
        for output in cell.get("outputs", []):
            kind = output.output_type
            if kind == "stream":  # one text per run of a stream, however it was chunked
                if outputs and outputs[-1][:2] == (kind, output.name):
                    outputs[-1] = (kind, output.name, outputs[-1][2] + output.text)
                else:
                    outputs.append((kind, output.name, output.text))
            elif kind == "error":
                outputs.append((kind, output.ename, output.evalue))
            else:
                outputs.append((kind, output.get("data", {}).get("text/plain")))
        cells.append((cell.source if injected else None, outputs))
    return cells


def papermill_seen(notebook: Path, folder: Path, kernel: str) -> list[Any]:
    """What a reader sees of ``notebook`` run by papermill with ``PARAMETERS`` in
    ``folder`` (its working folder)."""
    import papermill

    folder.mkdir(parents=True, exist_ok=True)
    output = folder / "papermill.ipynb"
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=PARAMETERS,
        kernel_name=kernel,
        cwd=str(folder),
        progress_bar=False,
    )
    return seen(nbformat.read(output, as_version=4))
