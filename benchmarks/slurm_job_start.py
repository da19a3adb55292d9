"""What a Slurm job costs on its node before its first cell: the job's whole process.

Runs ``python -m notebook_jobs.tasks.engine.slurm.job JOB_DIR`` (what the batch script
runs) on a one-cell notebook, and the same process importing the job module only,
alternating this checkout with another (``--before``, e.g. a ``git worktree`` of an older
commit), so both see the same machine at the same moments.

    .venv/bin/python benchmarks/slurm_job_start.py --before /tmp/old --runs 10
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
COUNT_PREFECT = (
    "import sys, notebook_jobs.tasks.engine.slurm.job; "
    "print(sum(m.split('.')[0] == 'prefect' for m in sys.modules))"
)


def job_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="nbjobs-job-"))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, folder / STAGED_NAME)
    write_job_spec(
        folder,
        kernel="python3",
        cell_origin=[0],
        selected=None,
        cell_timeout_seconds=60,
        timeout_seconds=120,
    )
    return folder


def timed(command: list[str], tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    # not from the repository's root: its notebook_jobs/ would come before PYTHONPATH
    subprocess.run(
        command, env=env, cwd=tempfile.gettempdir(), check=True, capture_output=True, timeout=300
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "now": ROOT}
    results: dict[str, dict[str, list[float]]] = {name: {"import": [], "job": []} for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            folder = job_folder()
            results[name]["import"].append(
                timed([sys.executable, "-c", "import notebook_jobs.tasks.engine.slurm.job"], tree)
            )
            results[name]["job"].append(
                timed(
                    [sys.executable, "-m", "notebook_jobs.tasks.engine.slurm.job", str(folder)],
                    tree,
                )
            )
            assert json.loads((folder / REPORT_NAME).read_text())["status"] == "completed"
    for name, tree in trees.items():
        modules = subprocess.run(
            [sys.executable, "-c", COUNT_PREFECT],
            env={**os.environ, "PYTHONPATH": str(tree)},
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(
            f"{name:7} prefect modules {modules:>4}  "
            + "  ".join(
                f"{kind} median {statistics.median(values):.3f} s "
                f"(min {min(values):.3f}, max {max(values):.3f})"
                for kind, values in results[name].items()
            )
        )


if __name__ == "__main__":
    main()
