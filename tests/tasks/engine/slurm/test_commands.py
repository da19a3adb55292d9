"""What sacct, squeue, scontrol and sbatch print, parsed."""

from __future__ import annotations

import pytest

from notebook_jobs.blocks.exceptions import SlurmSubmissionError
from notebook_jobs.tasks.engine.slurm.commands import (
    JobStatus,
    parse_sacct,
    parse_sbatch,
    parse_scontrol,
    parse_squeue,
)

pytestmark = pytest.mark.unit


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


def test_parse_sacct_takes_the_highest_maxrss_of_the_jobs_steps() -> None:
    output = "12|OUT_OF_MEMORY|0:125|vm|\n12.batch|OUT_OF_MEMORY|0:125|vm|353224K\n"
    output += "12.extern|COMPLETED|0:0|vm|0\n13.batch|COMPLETED|0:0|vm|9G\n"
    status = parse_sacct(output, "12")
    assert status is not None and status.state == "OUT_OF_MEMORY"
    assert status.max_rss_bytes == 353224 * 1024


def test_parse_sacct_ignores_other_jobs_and_steps() -> None:
    assert parse_sacct("13|COMPLETED|0:0|vm\n12.batch|FAILED|1:0|vm\n", "12") is None


def test_parse_squeue_and_sbatch() -> None:
    status = parse_squeue("12|RUNNING|vm\n", "12")
    assert status is not None and (status.state, status.node) == ("RUNNING", "vm")
    assert parse_squeue("", "12") is None
    assert parse_sbatch("12\n") == "12" and parse_sbatch("12;cluster\n") == "12"
    with pytest.raises(SlurmSubmissionError, match="no job id"):
        parse_sbatch("sbatch: error: Batch job submission failed\n")
