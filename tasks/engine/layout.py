"""The run-folder layout: where a run is kept on disk, and under which keys it is stored.

One run, one folder (``$NBJOBS_HOME/runs/<run key>``, or ``<work_dir>/runs/<run key>``
on a Slurm cluster's shared filesystem)::

    input.ipynb       the notebook as fetched
    staged.ipynb      parameterised, before execution (a Slurm job reads it)
    job.json          what a Slurm job runs (kernel, cells, timeouts)
    job.sbatch        the batch script
    events.jsonl      a Slurm job's cell events, one JSON line each
    execution.json    a Slurm job's report
    notebook.ipynb    executed, or as far as it ran
    notebook.html     the executed notebook rendered
    work/             the kernel's working folder: the files the notebook wrote

In the artefact store the run's keys sit under ``<flow name>/<run key>/``: the
notebooks, ``result.json``, ``files/`` (what ``work/`` held) and ``slurm/`` (the
job's output and a zip of its folder). A run whose store could not be reached is
kept whole in ``$NBJOBS_HOME/spill/`` with ``spill.json`` saying where it goes.
"""

from __future__ import annotations

from pathlib import Path

from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.blocks.settings import nbjobs_home

INPUT_NAME = "input.ipynb"
STAGED_NAME = "staged.ipynb"
JOB_SPEC_NAME = "job.json"
SECRETS_NAME = "secrets.json"  # a Slurm job's secret parameters: 0600, deleted when read
BATCH_SCRIPT_NAME = "job.sbatch"
EVENTS_NAME = "events.jsonl"
REPORT_NAME = "execution.json"
EXECUTED_NAME = "notebook.ipynb"
HTML_NAME = "notebook.html"
WORK_FOLDER = "work"
RESULT_NAME = "result.json"
FILES_FOLDER = "files"
DISPLAYS_FOLDER = "outputs"  # rich outputs of cells: outputs/cell-5-0.png
SPILL_MANIFEST = "spill.json"
# the artefacts every run has, by their field in ``Artefacts``
MAIN_ARTEFACTS = {"input": INPUT_NAME, "notebook": EXECUTED_NAME, "html": HTML_NAME}


def runs_root() -> Path:
    """Where run folders live until their artefacts are stored (``$NBJOBS_HOME/runs``)."""
    return nbjobs_home() / "runs"


def spill_root() -> Path:
    """Where runs whose store was unreachable keep their artefacts (``$NBJOBS_HOME/spill``)."""
    return nbjobs_home() / "spill"


def run_key(run_id: str, attempt: int) -> str:
    """A run's folder and key name: its id, and ``attempt-N`` for a retried flow run.

    A run started again (Prefect's retry, or after a crash) is a new attempt with its
    own folder and keys, so the first attempt's artefacts are never overwritten.

    Example:
        >>> run_key("3fa2", 2)
        '3fa2/attempt-2'
    """
    return run_id if attempt <= 1 else f"{run_id}/attempt-{attempt}"


def run_folder(run_key: str, work_dir: str | None = None) -> Path:
    """A run's folder: under ``$NBJOBS_HOME/runs``, or a cluster's shared ``work_dir``."""
    return (Path(work_dir) / "runs" if work_dir else runs_root()) / run_key


def run_prefix(flow_name: str, run_key: str) -> str:
    """The key prefix of one run in the store: ``<flow-name>/<run key>``."""
    return safe_key(flow_name, run_key)
