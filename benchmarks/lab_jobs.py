"""From "Create" in JupyterLab to the job Completed: our backend against jupyter-scheduler's.

Two ``jupyter lab`` servers on the same folder of notebooks, started as users start
them: ``nbjobs lab`` (our backend, on a local server of its own) and ``jupyter lab``
with jupyter-scheduler's default backend (its ``Scheduler``, SQLite database and
staging folder, a process per job running nbconvert). Each round creates one job on
each, alternating which goes first, as the dialog does (``POST /scheduler/jobs``), and
polls ``GET /scheduler/jobs/{id}`` every 50 ms until it is Completed, as a user who
reloads the panel would see it. Prints the spread of each, and the ratio of medians.

    .venv/bin/python benchmarks/lab_jobs.py --rounds 10 [--notebook tests/data/trivial.ipynb]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, ROOT, spread
from tests.processes import free_port, stop

TOKEN = "benchmark"
DEFAULT_BACKEND = [
    "--SchedulerApp.scheduler_class=jupyter_scheduler.scheduler.Scheduler",
    "--SchedulerApp.environment_manager_class=jupyter_scheduler.environments.CondaEnvironmentManager",
    "--SchedulerApp.job_files_manager_class=jupyter_scheduler.job_files_manager.JobFilesManager",
]


def call(url: str, method: str = "GET", body: Any = None) -> Any:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"token {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read() or b"null")


@contextlib.contextmanager
def lab(command: list[str], root: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """A jupyter lab on 127.0.0.1; its /scheduler URL."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *command,
                "--no-browser",
                "--allow-root",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--IdentityProvider.token={TOKEN}",
                f"--ServerApp.root_dir={root}",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=root,
        )
        url = f"http://127.0.0.1:{port}/scheduler"
        try:
            deadline = time.monotonic() + 300
            while True:
                with contextlib.suppress(OSError):
                    call(f"{url}/runtime_environments")
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield url
        finally:
            stop(process)


def one_job(url: str, notebook: str, environment: str) -> float:
    """Seconds from the create request to the job read back Completed."""
    began = time.perf_counter()
    job_id = call(
        f"{url}/jobs",
        "POST",
        {
            "input_uri": notebook,
            "runtime_environment_name": environment,
            "name": "benchmark",
            "output_formats": ["ipynb", "html"],
        },
    )["job_id"]
    while True:
        status = call(f"{url}/jobs/{job_id}")["status"]
        if status == "COMPLETED":
            return time.perf_counter() - began
        # not STOPPED: jupyter-scheduler's own jobs say STOPPED (its column's default)
        # until their process has started
        if status == "FAILED" or time.perf_counter() - began > 300:
            raise RuntimeError(f"job {job_id} is {status}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--notebook", type=Path, default=ROOT / "tests" / "data" / "trivial.ipynb")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nbjobs-lab-bench-"))
    root = home / "notebooks"
    root.mkdir()
    shutil.copy(args.notebook, root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        NBJOBS_HOME=str(home / "nbjobs"),
        PREFECT_HOME=str(home / "prefect"),
        JUPYTER_CONFIG_DIR=str(home / "jupyter-config"),
        JUPYTER_DATA_DIR=str(home / "jupyter-data"),  # the default's database and staging
        JUPYTER_RUNTIME_DIR=str(home / "jupyter-runtime"),
    )
    times: dict[str, list[float]] = {"notebook-jobs": [], "jupyter-scheduler": []}
    database = f"sqlite:///{home / 'scheduler.sqlite'}"
    try:
        with (
            lab([str(BIN / "nbjobs"), "lab"], root, env, home / "ours.log") as ours,
            lab(
                # its database on disk: its job processes open it too (ours keeps none)
                [str(BIN / "jupyter-lab"), *DEFAULT_BACKEND, f"--SchedulerApp.db_url={database}"],
                root,
                env,
                home / "theirs.log",
            ) as theirs,
        ):
            environment = call(f"{theirs}/runtime_environments")[0]["name"]
            one_job(ours, args.notebook.name, "notebook")  # warm both once, unmeasured
            one_job(theirs, args.notebook.name, environment)
            for round_ in range(args.rounds):
                order = [
                    ("notebook-jobs", ours, "notebook"),
                    ("jupyter-scheduler", theirs, environment),
                ]
                for name, url, env_name in order if round_ % 2 == 0 else order[::-1]:
                    times[name].append(one_job(url, args.notebook.name, env_name))
    finally:
        subprocess.run([str(BIN / "nbjobs"), "server", "stop"], env=env, capture_output=True)
    for name, values in times.items():
        print(f"{name:18} Create -> Completed  {spread(values)}")
    ratio = statistics.median(times["notebook-jobs"]) / statistics.median(
        times["jupyter-scheduler"]
    )
    print(f"notebook-jobs / jupyter-scheduler (medians): {ratio:.2f}")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
