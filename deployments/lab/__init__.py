"""notebook-jobs as jupyter-scheduler's backend: JupyterLab's "Create Notebook Job"
dialog and "Notebook Jobs" panel, on Prefect.

jupyter-scheduler's documented extension points are ``SchedulerApp.scheduler_class``,
``environment_manager_class`` and ``job_files_manager_class``. The package installs
jupyter-scheduler's own config file (``jupyter_jupyter_scheduler_config.json``, in
``$PREFIX/etc/jupyter``) setting all three, so ``jupyter lab`` in an environment with
``notebook-jobs[jupyterlab]`` uses them with no setting. (A ``jupyter_server_config.d``
file cannot: the server reads those for ``jpserver_extensions`` only.)

- A job is a flow run of ``run-notebook`` (``jobs``), a job definition is a notebook
  deployment (``job_definitions``); nothing is kept beside Prefect and our store, so the
  Prefect UI and JupyterLab show the same runs.
- The dialog's environment is a kernel, its compute type one of our places to run
  (``environments``); outputs come from the run's stored artefacts (``files``).
"""
