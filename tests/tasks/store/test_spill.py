"""A spilled run keeps its rich outputs, and says where they are."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from notebook_jobs.tasks.store.artefacts import RunFolder
from notebook_jobs.tasks.store.spill import spill_run

pytestmark = pytest.mark.unit


def test_a_spilled_run_lists_its_rich_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a home of its own: the session's spill folder is retried whole by test_spill.py
    monkeypatch.setenv("NBJOBS_HOME", str(tmp_path / "home"))
    run_dir = tmp_path / "run"
    (run_dir / "outputs").mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(), run_dir / "notebook.ipynb")
    (run_dir / "outputs" / "cell-2-0.png").write_bytes(b"\x89PNG\r\n-a-plot")
    folder = RunFolder(run_dir, prefix=f"run-notebook/{tmp_path.name}")
    target, artefacts = spill_run(
        folder, store_spec="s3://gone/runs", reason="the store did not answer"
    )
    (shown,) = artefacts.displays
    kept = target / "outputs" / "cell-2-0.png"
    assert target.is_relative_to(tmp_path / "home" / "spill")
    assert (shown.cell, shown.output, shown.content_type) == (2, 0, "image/png")
    assert (shown.uri, shown.link, shown.size_bytes) == (str(kept), kept.as_uri(), 13)
    assert kept.read_bytes() == b"\x89PNG\r\n-a-plot"
