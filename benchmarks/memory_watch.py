"""What measuring memory and CPU per cell costs a cell-heavy notebook.

Runs a notebook of ``--cells`` small cells (a few milliseconds of work each) as a Slurm
job's process runs it on a node (``python -m notebook_jobs.tasks.engine.slurm.job
JOB_DIR``: the engine alone), alternating this checkout with another (``--before``, a
``git worktree`` of the commit before per-cell memory), so both see the same machine at
the same moments. Prints the median of the run's own execute time (``execute_seconds``
in its report: the kernel start and every cell) and of the whole process; with
``--limit`` this checkout also runs under a memory limit (the sampler's checks).

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/memory_watch.py --before /tmp/before --runs 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from notebook_jobs.tasks.engine.layout import REPORT_NAME, STAGED_NAME
from notebook_jobs.tasks.engine.slurm.job import write_job_spec

ROOT = Path(__file__).resolve().parents[1]
CELL = "total = sum(i * i for i in range(20_000))"  # about 2 ms


def job_folder(cells: int, limit: int | None) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="nbjobs-memory-"))
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(CELL) for _ in range(cells)]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, folder / STAGED_NAME)
    write_job_spec(
        folder,
        kernel="python3",
        cell_origin=list(range(cells)),
        selected=None,
        cell_timeout_seconds=60,
        timeout_seconds=600,
        memory_limit_bytes=limit,
    )
    return folder


def run(tree: Path, folder: Path) -> tuple[float, float]:
    """The whole process's seconds, and the run's own execute seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    # not from the repository's root: its notebook_jobs/ would come before PYTHONPATH
    subprocess.run(
        [sys.executable, "-m", "notebook_jobs.tasks.engine.slurm.job", str(folder)],
        env=env,
        cwd=tempfile.gettempdir(),
        check=True,
        capture_output=True,
        timeout=900,
    )
    whole = time.perf_counter() - started
    report = json.loads((folder / REPORT_NAME).read_text())
    assert report["status"] == "completed", report.get("error")
    return whole, float(report["execute_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--limit", action="store_true", help="also run this one under 8GiB")
    args = parser.parse_args()
    kinds = {"before": (args.before.resolve(), None), "now": (ROOT, None)}
    if args.limit:
        kinds["now, 8GiB limit"] = (ROOT, 8 * 1024**3)
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
    for _ in range(args.runs):
        for name, (tree, limit) in kinds.items():
            found[name].append(run(tree, job_folder(args.cells, limit)))
    base = statistics.median(e for _, e in found["before"])
    for name, values in found.items():
        execute = statistics.median(e for _, e in values)
        whole = statistics.median(w for w, _ in values)
        print(
            f"{name:16} {args.cells} cells: execute median {execute:.3f} s "
            f"({(execute / base - 1) * 100:+.1f} %), whole process median {whole:.3f} s"
        )


if __name__ == "__main__":
    main()
