"""The sbatch script of one run's job: a pure function, checked against golden files."""

from __future__ import annotations

import re
import shlex
import sys
from typing import TYPE_CHECKING

from notebook_jobs.blocks.exceptions import SlurmClusterError
from notebook_jobs.blocks.sbatch import directive_value

if TYPE_CHECKING:  # a Prefect block: the job on the node imports no Prefect
    from notebook_jobs.blocks.slurm import SlurmCluster  # noqa: TID251 (typing only)

JOB_MODULE = "notebook_jobs.tasks.engine.slurm.job"


def render_batch_script(
    cluster: SlurmCluster, *, job_dir: str, job_name: str, python: str | None = None
) -> str:
    """The sbatch script (see ``_render``).

    Raises:
        SlurmClusterError: A value an ``#SBATCH`` line cannot carry (the job folder's
            path too), or a container runtime without an image.
    """
    try:
        return _render(cluster, job_dir=job_dir, job_name=job_name, python=python)
    except ValueError as error:  # directive_value's, or the container's below
        raise SlurmClusterError(
            f"the SlurmCluster cannot run this job: {error}", name=""
        ) from error


def _render(
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
        f"#SBATCH --chdir={directive_value('job folder', job_dir)}",
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
            lines.append(f"#SBATCH --{option}={directive_value(option, value)}")
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
