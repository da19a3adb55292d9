"""The dialog's "Environment" and "Compute type": a kernel, and where the run goes.

jupyter-scheduler's default lists conda environments; a run of ours starts a kernel by
name on a worker, so the environments are the kernels Jupyter knows (the worker on
this machine has the same ones). The compute types are our places to run, read from
Prefect on each call: the default pool (the local worker, on the local server), each
other pool that has a worker's ``adhoc-<pool>`` deployment, each queue of the default
pool, and each SlurmCluster block.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_scheduler.environments import EnvironmentManager, EnvironmentRetrievalError
from jupyter_scheduler.models import RuntimeEnvironment

from notebook_jobs.blocks.exceptions import APIError, LocalServerError
from notebook_jobs.deployments.api import PrefectHTTP
from notebook_jobs.deployments.lab.compute import LOCAL_WORKER, POOL, QUEUE, SLURM
from notebook_jobs.deployments.lab.connection import Connection, connect
from notebook_jobs.deployments.lab.jobs import NOTEBOOK_KERNEL, OUTPUT_FORMATS
from notebook_jobs.deployments.names import GENERAL_DEPLOYMENT, POOL_NAME
from notebook_jobs.tasks.names import RUN_FLOW

SLURM_BLOCK_TYPE = "slurm-cluster"  # blocks/slurm.py's _block_type_slug


def compute_choices(connection: Connection) -> list[str]:
    """The compute types, the default first.

    Raises:
        APIError: The server did not answer.
    """
    with connection.client() as api:
        pools = [
            d["name"].removeprefix(f"{GENERAL_DEPLOYMENT}-")
            for d in _all(
                api,
                "/deployments/filter",
                {"flows": _flow(), "deployments": {"name": {"like_": f"{GENERAL_DEPLOYMENT}-"}}},
            )
            if d["name"].startswith(f"{GENERAL_DEPLOYMENT}-")
        ]
        queues = [
            q["name"]
            for q in _all(api, f"/work_pools/{POOL_NAME}/queues/filter", {})
            if q["name"] != "default"
        ]
        clusters = [
            b["name"]
            for b in _all(
                api,
                "/block_documents/filter",
                {"block_types": {"slug": {"any_": [SLURM_BLOCK_TYPE]}}},
            )
            if b.get("name")
        ]
    default = LOCAL_WORKER if connection.local is not None else POOL + POOL_NAME
    return [
        default,
        *(POOL + p for p in sorted(pools)),
        *(QUEUE + q for q in sorted(queues)),
        *(SLURM + c for c in sorted(clusters)),
    ]


def _flow() -> dict[str, Any]:
    return {"name": {"any_": [RUN_FLOW]}}


def _all(api: PrefectHTTP, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return api.filter_all(path, body)
    except APIError as error:
        if error.status_code == 404:  # no such pool (a configured server without ours)
            return []
        raise


class KernelEnvironments(EnvironmentManager):  # type: ignore[misc]
    """Jupyter's kernels, each with our compute types."""

    async def list_environments(self) -> list[RuntimeEnvironment]:
        try:
            connection = await asyncio.to_thread(connect)
            choices = await asyncio.to_thread(compute_choices, connection)
        except (LocalServerError, APIError) as error:
            raise EnvironmentRetrievalError(f"notebook-jobs: {error}") from None
        specs = await asyncio.to_thread(KernelSpecManager().get_all_specs)
        own = RuntimeEnvironment(
            name=NOTEBOOK_KERNEL,
            label=NOTEBOOK_KERNEL,
            description="each notebook in the kernel its metadata names, as nbjobs run does",
            file_extensions=["ipynb"],
            output_formats=list(OUTPUT_FORMATS),
            metadata={},
            compute_types=choices,
            default_compute_type=choices[0],
            utc_only=False,
        )
        return [own] + [
            RuntimeEnvironment(
                name=name,
                label=name,  # the dialog selects by label and shows the name: the same
                description=f"{specs[name]['spec'].get('display_name', name)} (kernel {name})",
                file_extensions=["ipynb"],
                output_formats=list(OUTPUT_FORMATS),
                metadata={"kernel": name},
                compute_types=choices,
                default_compute_type=choices[0],
                utc_only=False,
            )
            for name in sorted(specs)
        ]

    def manage_environments_command(self) -> str:
        return ""

    def output_formats_mapping(self) -> dict[str, str]:
        return {"ipynb": "Notebook", "html": "HTML"}
