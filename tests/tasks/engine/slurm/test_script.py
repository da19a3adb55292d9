"""The batch script of a run's job, against golden files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from notebook_jobs.blocks.exceptions import SlurmClusterError
from notebook_jobs.blocks.slurm import SlurmCluster
from notebook_jobs.tasks.engine.slurm.script import render_batch_script

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("NBJOBS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; NBJOBS_UPDATE_GOLDEN=1 rewrites it"


def test_minimal_batch_script() -> None:
    cluster = SlurmCluster(work_dir="/shared/nbjobs")
    script = render_batch_script(
        cluster,
        job_dir="/shared/nbjobs/runs/r1",
        job_name="nbjobs-report.ipynb",
        python="/opt/venv/bin/python",
    )
    check_golden("minimal.sbatch", script)


def test_full_batch_script_with_container_modules_and_mail() -> None:
    cluster = SlurmCluster(
        work_dir="/shared/nbjobs",
        partition="gpu",
        account="proj-42",
        qos="high",
        time_limit="02:00:00",
        cpus_per_task=8,
        memory="32G",
        gpus="a100:2",
        extra_directives=["--mail-user=ana@example.org", "--mail-type=END,FAIL"],
        modules=["cuda/12.4", "python/3.11"],
        setup_commands=["source /opt/envs/analysis/bin/activate", "export OMP_NUM_THREADS=8"],
        container_runtime="apptainer",
        container_image="/images/notebooks.sif",
    )
    script = render_batch_script(
        cluster, job_dir="/shared/nbjobs/runs/r2", job_name="nbjobs-a b.ipynb", python="python3"
    )
    check_golden("full.sbatch", script)


def test_values_an_sbatch_line_cannot_carry_are_refused() -> None:
    with pytest.raises(SlurmClusterError, match="job folder '/shared/my run' has characters"):
        render_batch_script(
            SlurmCluster(work_dir="/shared"), job_dir="/shared/my run", job_name="j"
        )
    # a block's own values are refused when it is made (or loaded), not when a job is written
    with pytest.raises(ValidationError, match="partition 'a;b' has characters"):
        SlurmCluster(work_dir="/w", partition="a;b")
