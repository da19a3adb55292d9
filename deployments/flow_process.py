"""A flow run in a subprocess of the worker: Prefect's engine, inside a runtime of its own.

``nbjobs serve --isolation process`` and deployments with pull steps run each of our
flow runs in a Python subprocess that Prefect's process worker starts. Its command is
this module instead of ``python -m prefect.engine`` (``deployments.worker`` sets the
job's ``command`` when the deployment left it empty), so the run's process makes a
``Runtime`` as every other process that runs notebooks does: links to the worker's file
server (its address comes in the job's environment, ``NBJOBS_FILES_URL``) and Prefect's
logging of our errors, once and without a framework traceback.

Run as ``python -m notebook_jobs.deployments.flow_process``; the flow run's id comes as
for Prefect's engine (``PREFECT__FLOW_RUN_ID``).
"""

from __future__ import annotations

import runpy
import sys

from notebook_jobs.blocks.settings import settings
from notebook_jobs.tasks.runtime import Runtime, using_runtime

MODULE = "notebook_jobs.deployments.flow_process"


def command() -> str:
    """The job command that starts a flow run with this module."""
    return f"{sys.executable} -m {MODULE}"


def main() -> None:
    """Prefect's engine, as ``python -m prefect.engine`` runs it, inside a runtime."""
    with using_runtime(Runtime(files_url=settings().files_url)):
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
