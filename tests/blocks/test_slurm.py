"""Pure parts of the Slurm block: the batch script (golden files), sacct/squeue/sbatch parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from notebook_jobs.blocks.exceptions import SlurmSubmissionError
from notebook_jobs.blocks.slurm import (
    JobStatus,
    SlurmCluster,
    parse_sacct,
    parse_sbatch,
    parse_scontrol,
    parse_squeue,
    render_batch_script,
)

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
    with pytest.raises(ValueError, match="job folder '/shared/my run' has characters"):
        render_batch_script(
            SlurmCluster(work_dir="/shared"), job_dir="/shared/my run", job_name="j"
        )
    # a block's own values are refused when it is made (or loaded), not when a job is written
    with pytest.raises(ValidationError, match="partition 'a;b' has characters"):
        SlurmCluster(work_dir="/w", partition="a;b")


def test_directives_cannot_inject_lines() -> None:
    with pytest.raises(ValidationError, match="must be one --option"):
        SlurmCluster(work_dir="/w", extra_directives=["--mail-user=x\nrm -rf /"])
    with pytest.raises(ValidationError):
        SlurmCluster(work_dir="/w", extra_directives=["echo hi"])


def test_a_container_runtime_needs_an_image() -> None:
    """It used to be found when the run wrote its job, which then ended with nothing stored."""
    with pytest.raises(ValidationError, match="container_image"):
        SlurmCluster(work_dir="/w", container_runtime="singularity")


def test_parse_scontrol_knows_a_job_accounting_does_not() -> None:
    line = (
        "JobId=41 JobName=nbjobs-report.ipynb UserId=root(0) JobState=COMPLETED Reason=None "
        "Dependency=(null) ExitCode=0:0 RunTime=00:00:03 NodeList=vm BatchHost=vm"
    )
    assert parse_scontrol(line, "41") == JobStatus("41", "COMPLETED", 0, 0, "vm")
    pending = "JobId=42 JobState=PENDING Reason=Priority ExitCode=0:0 NodeList=(null)"
    assert parse_scontrol(pending, "42") == JobStatus("42", "PENDING", 0, 0, None)
    assert parse_scontrol(line, "7") is None
    assert parse_scontrol("slurm_load_jobs error: Invalid job id specified", "41") is None


@pytest.mark.parametrize(
    ("line", "state", "exit_code", "signal", "node"),
    [
        ("12|COMPLETED|0:0|vm", "COMPLETED", 0, 0, "vm"),
        ("12|FAILED|1:0|vm", "FAILED", 1, 0, "vm"),
        ("12|CANCELLED by 0|0:15|vm", "CANCELLED", 0, 15, "vm"),
        ("12|TIMEOUT|0:0|node7", "TIMEOUT", 0, 0, "node7"),
        ("12|OUT_OF_MEMORY|0:125|vm", "OUT_OF_MEMORY", 0, 125, "vm"),
        ("12|NODE_FAIL|0:0|vm", "NODE_FAIL", 0, 0, "vm"),
        ("12|PENDING|0:0|None assigned", "PENDING", 0, 0, None),
        ("12|REQUEUED+|0:0|vm", "REQUEUED", 0, 0, "vm"),
    ],
)
def test_parse_sacct(line: str, state: str, exit_code: int, signal: int, node: str | None) -> None:
    output = f"{line}\n12.batch|COMPLETED|0:0|vm\n"
    status = parse_sacct(output, "12")
    assert status is not None
    assert (status.state, status.exit_code, status.signal, status.node) == (
        state,
        exit_code,
        signal,
        node,
    )


def test_parse_sacct_ignores_other_jobs_and_steps() -> None:
    assert parse_sacct("13|COMPLETED|0:0|vm\n12.batch|FAILED|1:0|vm\n", "12") is None


def test_parse_squeue_and_sbatch() -> None:
    status = parse_squeue("12|RUNNING|vm\n", "12")
    assert status is not None and (status.state, status.node) == ("RUNNING", "vm")
    assert parse_squeue("", "12") is None
    assert parse_sbatch("12\n") == "12" and parse_sbatch("12;cluster\n") == "12"
    with pytest.raises(SlurmSubmissionError, match="no job id"):
        parse_sbatch("sbatch: error: Batch job submission failed\n")
