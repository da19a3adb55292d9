"""A Slurm cluster: what it is, as a block saved once and named by runs.

How it is spoken to (the batch script, sbatch, sacct, squeue, scontrol, scancel) is
``tasks/engine/slurm/``.

Example:
    >>> cluster = SlurmCluster(partition="debug", work_dir="/shared/nbjobs", time_limit="01:00:00")
    >>> cluster.save("hpc")  # doctest: +SKIP
    >>> # then: run_notebook(notebook=..., cluster="hpc")
"""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from notebook_jobs.blocks.exceptions import SlurmClusterError
from notebook_jobs.blocks.sbatch import directive_value
from notebook_jobs.blocks.sizes import parse_size
from notebook_jobs.blocks.store import validation_error

JOB_HEADROOM_MIB = 256  # the job's own Python process (the engine) beside the kernel


class SlurmCluster(Block):
    """Where and how notebooks run as Slurm jobs.

    The execute step of a run becomes a batch job that runs the same execution code
    (``python -m notebook_jobs.tasks.engine.slurm.job JOB_DIR``) on a node; ``work_dir``
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
    memory_limit: str | None = Field(
        default=None,
        description=(
            "The kernel's memory limit for runs on this cluster (a run's memory_limit "
            "wins), e.g. 3GiB: the cell that reaches it is stopped before Slurm or the OOM "
            f"killer ends the job. Default: --mem less {JOB_HEADROOM_MIB} MiB for the job's own "
            "process."
        ),
    )
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
            directive_value(str(info.field_name), value)
        return value

    @field_validator("memory_limit")
    @classmethod
    def _is_a_size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)  # ValueError: says what a size looks like
        return value

    @model_validator(mode="after")
    def _container_is_complete(self) -> SlurmCluster:
        # checked here, where the block is saved or loaded, not when a run's job is written
        if self.container_runtime and not self.container_image:
            raise ValueError("container_runtime is set but container_image is not")
        return self


def kernel_memory_limit(cluster: SlurmCluster) -> int | None:
    """Bytes the kernel of a run on ``cluster`` may use, unless the run says: the block's
    ``memory_limit``, else its ``--mem`` less the job's own process (``JOB_HEADROOM_MIB``,
    half of a smaller ``--mem``), else none."""
    if cluster.memory_limit:
        return parse_size(cluster.memory_limit)
    if not cluster.memory:
        return None
    text = cluster.memory.strip()
    job = parse_size(text + "M" if text.isdigit() else text)  # sbatch reads a number as MB
    headroom = JOB_HEADROOM_MIB * 1024 * 1024
    return job - headroom if job > 2 * headroom else job // 2


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
            f"no SlurmCluster block named {name!r}: save one first (docs/slurm.md)",
            name=name,
        ) from error
    return cluster
