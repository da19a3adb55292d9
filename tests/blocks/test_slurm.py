"""The SlurmCluster block refuses values a batch script cannot carry, when it is made."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from notebook_jobs.blocks.slurm import SlurmCluster

pytestmark = pytest.mark.unit


def test_directives_cannot_inject_lines() -> None:
    with pytest.raises(ValidationError, match="must be one --option"):
        SlurmCluster(work_dir="/w", extra_directives=["--mail-user=x\nrm -rf /"])
    with pytest.raises(ValidationError):
        SlurmCluster(work_dir="/w", extra_directives=["echo hi"])


def test_a_container_runtime_needs_an_image() -> None:
    """It used to be found when the run wrote its job, which then ended with nothing stored."""
    with pytest.raises(ValidationError, match="container_image"):
        SlurmCluster(work_dir="/w", container_runtime="singularity")


def test_the_block_type_is_a_prefect_collection() -> None:
    """A Prefect server started in this environment imports it, and so lists SlurmCluster."""
    from importlib.metadata import entry_points

    (found,) = [e for e in entry_points(group="prefect.collections") if e.name == "notebook_jobs"]
    assert found.load().SlurmCluster is SlurmCluster
