"""A Slurm cluster: what it is (a block) and how to talk to it (sbatch, sacct, scancel).

The rendering of batch scripts and the parsing of ``sacct``/``squeue`` output are
pure functions; the commands run behind one seam, ``SlurmCommands``.

Example:
    >>> cluster = SlurmCluster(partition="debug", work_dir="/shared/nbjobs", time_limit="01:00:00")
    >>> cluster.save("hpc")  # doctest: +SKIP
    >>> # then: run_notebook(notebook=..., cluster="hpc")
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from notebook_jobs.blocks.exceptions import SlurmClusterError, SlurmSubmissionError
from notebook_jobs.blocks.store import validation_error

SLURM_COMMAND_TIMEOUT_SECONDS = 60
JOB_MODULE = "notebook_jobs.tasks.engine.slurm_job"

# Slurm's job states, by what they mean for a run.
RUNNING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
)
RETRYABLE_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "DEADLINE",
        "REVOKED",
        *RETRYABLE_STATES,
    }
)


class SlurmCluster(Block):
    """Where and how notebooks run as Slurm jobs.

    The execute step of a run becomes a batch job that runs the same execution code
    (``python -m notebook_jobs.tasks.engine.slurm_job JOB_DIR``) on a node; ``work_dir``
    must be visible to the submitting machine and to the nodes (a shared filesystem).
    """

    _block_type_name = "Slurm Cluster"
    _block_type_slug = "slurm-cluster"
    _description = "A Slurm cluster that runs notebook executions as batch jobs."

    work_dir: str = Field(
        description="Shared folder for job folders, visible to this machine and the nodes."
    )
    partition: str | None = Field(default=None, description="Partition (--partition).")
    account: str | None = Field(default=None, description="Account to charge (--account).")
    qos: str | None = Field(default=None, description="Quality of service (--qos).")
    time_limit: str | None = Field(
        default=None,
        description="Time limit (--time): minutes, MM:SS, HH:MM:SS or D-HH:MM:SS.",
    )
    cpus_per_task: int = Field(default=1, ge=1, description="CPUs for the job (--cpus-per-task).")
    memory: str | None = Field(default=None, description="Memory per node (--mem), e.g. 4G.")
    gpus: str | None = Field(default=None, description="GPUs (--gpus), e.g. 1 or a100:2.")
    extra_directives: list[str] = Field(
        default_factory=list,
        description="More #SBATCH options, e.g. --mail-user=me@example.org, --mail-type=END,FAIL.",
    )
    modules: list[str] = Field(
        default_factory=list, description="Environment modules to load (module load ...)."
    )
    setup_commands: list[str] = Field(
        default_factory=list,
        description="Shell lines run before the notebook, e.g. source /opt/env/bin/activate.",
    )
    container_runtime: Literal["apptainer", "singularity"] | None = Field(
        default=None, description="Run the execution inside a container with this runtime."
    )
    container_image: str | None = Field(
        default=None, description="The container image (.sif path or URI) for the runtime."
    )
    python: str = Field(
        default="",
        description="Python on the nodes with notebook-jobs installed; empty: this machine's.",
    )
    poll_interval_seconds: float = Field(
        default=1.0, gt=0, description="First interval between job state polls."
    )
    max_poll_interval_seconds: float = Field(
        default=15.0, gt=0, description="Longest interval between polls (backoff)."
    )
    node_failure_retries: int = Field(
        default=2, ge=0, description="Resubmissions after NODE_FAIL or PREEMPTED."
    )

    @field_validator("extra_directives")
    @classmethod
    def _directives_are_options(cls, value: list[str]) -> list[str]:
        for directive in value:
            if not directive.startswith("--") or "\n" in directive or "\r" in directive:
                raise ValueError(f"extra directive {directive!r} must be one --option[=value]")
        return value

    @field_validator("work_dir", "partition", "account", "qos", "time_limit", "memory", "gpus")
    @classmethod
    def _fits_a_directive(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _directive_value(str(info.field_name), value)
        return value

    @model_validator(mode="after")
    def _container_is_complete(self) -> SlurmCluster:
        # checked here, where the block is saved or loaded, not when a run's job is written
        if self.container_runtime and not self.container_image:
            raise ValueError("container_runtime is set but container_image is not")
        return self


@dataclass(frozen=True)
class JobStatus:
    """One reading of a job's state."""

    job_id: str
    state: str  # the Slurm state's first word: COMPLETED, FAILED, CANCELLED...
    exit_code: int | None = None
    signal: int | None = None
    node: str | None = None

    @property
    def finished(self) -> bool:
        """True once the job has ended, whatever the outcome."""
        return self.state in FINAL_STATES


def render_batch_script(
    cluster: SlurmCluster, *, job_dir: str, job_name: str, python: str | None = None
) -> str:
    """The sbatch script that runs the execute step of one notebook in ``job_dir``.

    Args:
        cluster: The cluster's settings.
        job_dir: The job folder on the shared filesystem (holds job.json).
        job_name: Slurm job name, shown by squeue and sacct.
        python: The node's Python; defaults to ``cluster.python`` or this interpreter.

    Returns:
        The script's text. Every value is shell-quoted.
    """
    q = shlex.quote
    name = re.sub(r"[^\w.-]+", "-", job_name)[:64]
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --chdir={_directive_value('job folder', job_dir)}",
        f"#SBATCH --output={job_dir}/slurm-%j.out",
        f"#SBATCH --error={job_dir}/slurm-%j.err",
        f"#SBATCH --cpus-per-task={cluster.cpus_per_task}",
    ]
    for option, value in (
        ("partition", cluster.partition),
        ("account", cluster.account),
        ("qos", cluster.qos),
        ("time", cluster.time_limit),
        ("mem", cluster.memory),
        ("gpus", cluster.gpus),
    ):
        if value:
            lines.append(f"#SBATCH --{option}={_directive_value(option, value)}")
    lines += [f"#SBATCH {directive}" for directive in cluster.extra_directives]
    lines += ["", "set -eo pipefail"]
    if cluster.modules:
        lines.append("module load " + " ".join(q(m) for m in cluster.modules))
    lines += cluster.setup_commands
    interpreter = python or cluster.python or sys.executable
    command = [interpreter, "-m", JOB_MODULE, job_dir]
    if cluster.container_runtime:
        if not cluster.container_image:
            raise ValueError("container_runtime is set but container_image is not")
        command = [
            cluster.container_runtime,
            "exec",
            "--bind",
            job_dir,
            cluster.container_image,
            *command,
        ]
    lines += [
        'echo "nbjobs: job $SLURM_JOB_ID on $(hostname)" >&2',
        "exec " + " ".join(q(part) for part in command),
        "",
    ]
    return "\n".join(lines)


_DIRECTIVE_VALUE = re.compile(r"[\w@%:/.,=+-]+")


def _directive_value(what: str, value: str) -> str:
    # sbatch reads #SBATCH lines itself, not through a shell: no quoting to rely on.
    if not _DIRECTIVE_VALUE.fullmatch(value):
        raise ValueError(f"{what} {value!r} has characters an #SBATCH line cannot carry")
    return value


async def load_cluster(name: str) -> SlurmCluster:
    """The ``SlurmCluster`` block saved as ``name``.

    Raises:
        SlurmClusterError: No such block, or one saved with values it cannot hold.
    """
    try:
        cluster: SlurmCluster = await SlurmCluster.aload(name)
    except (ValidationError, RuntimeError) as error:
        problems = validation_error(error)
        if problems is None:
            raise
        raise SlurmClusterError(
            f"the SlurmCluster block {name!r} cannot be used: {problems}", name=name
        ) from error
    except ValueError as error:  # Prefect's "Unable to find block document named ..."
        raise SlurmClusterError(
            f"no SlurmCluster block named {name!r}: save one first (README, Slurm section)",
            name=name,
        ) from error
    return cluster


def parse_sacct(output: str, job_id: str) -> JobStatus | None:
    """Read the job's own line of ``sacct --parsable2 --noheader -o JobID,State,ExitCode,NodeList``.

    Returns:
        The status, or ``None`` when sacct does not list the job (yet).
    """
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 3 or fields[0] != job_id:
            continue
        state = fields[1].split()[0].rstrip("+") if fields[1].strip() else "UNKNOWN"
        exit_code, _, signal = fields[2].partition(":")
        node = fields[3] if len(fields) > 3 and fields[3] not in ("", "None assigned") else None
        return JobStatus(
            job_id,
            state,
            int(exit_code) if exit_code.isdigit() else None,
            int(signal) if signal.isdigit() else None,
            node,
        )
    return None


def parse_squeue(output: str, job_id: str) -> JobStatus | None:
    """Read ``squeue -h -j ID -o %i|%T|%N``; ``None`` when the job is not queued."""
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 2 and fields[0] == job_id:
            node = fields[2] if len(fields) > 2 and fields[2] else None
            return JobStatus(job_id, fields[1], None, None, node)
    return None


def parse_scontrol(output: str, job_id: str) -> JobStatus | None:
    """Read ``scontrol show job -o ID`` (one line of ``Key=Value`` words); None if absent.

    slurmctld keeps an ended job for ``MinJobAge`` (300 s by default), so this knows a
    job that accounting does not (yet): ``sacct`` lags, or accounting is off.
    """
    for line in output.splitlines():
        words = dict(
            word.split("=", 1) for word in line.split() if "=" in word and not word.startswith("=")
        )
        if words.get("JobId") != job_id or not words.get("JobState"):
            continue
        exit_code, _, signal = words.get("ExitCode", "").partition(":")
        node = words.get("NodeList") or None
        return JobStatus(
            job_id,
            words["JobState"],
            int(exit_code) if exit_code.isdigit() else None,
            int(signal) if signal.isdigit() else None,
            None if node in (None, "(null)") else node,
        )
    return None


_JOB_ID = re.compile(r"^(\d+)(;\S+)?$")


def parse_sbatch(output: str) -> str:
    """The job id from ``sbatch --parsable`` (``"123"`` or ``"123;cluster"``)."""
    text = output.strip().splitlines()[-1] if output.strip() else ""
    match = _JOB_ID.match(text)
    if not match:
        raise SlurmSubmissionError(f"sbatch printed no job id: {output.strip()[:500]!r}")
    return match.group(1)


class SlurmCommands:
    """The one seam to the cluster: runs sbatch, sacct, squeue and scancel here."""

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                args,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=SLURM_COMMAND_TIMEOUT_SECONDS,
            )
        except FileNotFoundError as error:
            raise SlurmSubmissionError(
                f"{args[0]} not found: is this machine a Slurm submit host (slurm-client)?"
            ) from error
        except subprocess.TimeoutExpired as error:
            raise SlurmSubmissionError(
                f"{args[0]} did not answer in {SLURM_COMMAND_TIMEOUT_SECONDS} s: "
                "is slurmctld reachable?"
            ) from error

    def submit(self, script_path: str) -> str:
        """``sbatch --parsable SCRIPT``; returns the job id."""
        done = self._run(["sbatch", "--parsable", script_path])
        if done.returncode != 0:
            raise SlurmSubmissionError(
                f"sbatch failed (exit {done.returncode}): {done.stderr.strip()[:1000]}"
            )
        return parse_sbatch(done.stdout)

    def status(self, job_id: str) -> JobStatus | None:
        """The job's state from sacct; from squeue or scontrol where sacct does not list it.

        Accounting lags on busy clusters and is off on some: a job it does not know may
        be queued (squeue), or ended a moment ago (scontrol keeps it for a while).

        Returns:
            The status, or ``None`` when no command knows the job.

        Raises:
            SlurmSubmissionError: A command is missing or did not answer.
        """
        done = self._run(
            [
                "sacct",
                "-j",
                job_id,
                "-X",
                "--parsable2",
                "--noheader",
                "-o",
                "JobID,State,ExitCode,NodeList",
            ]
        )
        status = parse_sacct(done.stdout, job_id) if done.returncode == 0 else None
        if status is not None:
            return status
        queued = self._run(["squeue", "-h", "-j", job_id, "-o", "%i|%T|%N"])
        status = parse_squeue(queued.stdout, job_id) if queued.returncode == 0 else None
        if status is not None:
            return status
        shown = self._run(["scontrol", "show", "job", "-o", job_id])
        return parse_scontrol(shown.stdout, job_id) if shown.returncode == 0 else None

    def cancel(self, job_id: str) -> None:
        """``scancel JOB``; a job that already ended is not an error."""
        self._run(["scancel", job_id])
