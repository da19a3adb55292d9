"""notebook-jobs: Jupyter notebooks as orchestrated Prefect jobs.

Everything installed lives under this one name, so that a Prefect project's own
``flows`` or ``tasks`` package, installed beside it, is never shadowed:

    notebook_jobs.flows        the Prefect flows: run-notebook, run-notebooks
    notebook_jobs.tasks        the Prefect tasks, and the engine that runs a kernel
    notebook_jobs.blocks       settings, errors, the artefact store, the Slurm cluster
    notebook_jobs.deployments  the nbjobs command, the worker, the local server

In the repository these are the top-level folders (the product's layout); here they
are symbolic links to them, and the wheel maps each folder under this name.
"""
