"""``nbjobs serve --isolation process``: each run of ours in a subprocess of the worker.

The subprocess starts in a runtime of its own (``deployments/flow_process.py``), as an
in-process run does in the worker's: the links of a local store point at the worker's file
server, and a failed notebook is logged once at ERROR, with its own traceback, not
Prefect's engine lines for it.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from notebook_jobs.deployments.api import fetch
from notebook_jobs.tasks.models import summary_links
from tests.conftest import DATA
from tests.deployments.conftest import BIN, ROOT, HTTPStack
from tests.deployments.test_series import wait_until
from tests.processes import free_port, stop


def test_a_run_in_a_subprocess_links_to_the_workers_files_and_logs_its_failure_once(
    http_stack: HTTPStack, tmp_path: Path
) -> None:
    pool = f"isolated-{uuid.uuid4().hex[:6]}"
    files_url = f"http://127.0.0.1:{free_port()}"
    env = {**http_stack.env, "NBJOBS_STORE": str(tmp_path / "store")}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [
            str(BIN / "nbjobs"), "serve", "--pool", pool, "--isolation", "process",
            "--files-port", files_url.rsplit(":", 1)[1], "--no-adhoc",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    try:
        ran = {}
        for notebook in ("params", "raises"):
            name = f"{pool}-{notebook}"
            done = subprocess.run(
                [str(BIN / "nbjobs"), "deploy", str(DATA / f"{notebook}.ipynb"), "--name", name,
                 "--pool", pool],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            ran[notebook] = http_stack.api.trigger("run-notebook", name, {})
        ended = {notebook: http_stack.api.wait(run, 300) for notebook, run in ran.items()}
        worker_log = (tmp_path / "worker.log").read_text()
        assert ended["params"]["state"]["type"] == "COMPLETED", worker_log[-3000:]
        assert ended["raises"]["state"]["type"] == "FAILED", worker_log[-3000:]
        # the links point at the worker's file server, which serves what was stored
        documents = {}
        for notebook, run in ran.items():
            summary = next(
                a["data"] for key, a in http_stack.api.artifacts(run).items()
                if key.endswith("-summary")
            )  # fmt: skip
            link = summary_links(summary)["result"]
            assert link.startswith(f"{files_url}/files/"), link
            documents[notebook] = fetch(link).json()
        # (a subprocess's log records reach the API in batches, shortly after its state:
        # wait for the flow run's last one, not its task's)
        records = wait_until(
            "the failed run's log records",
            lambda: (
                (found := http_stack.api.logs(ran["raises"]))
                and any(
                    r["message"].startswith("Finished in state Failed") and not r["task_run_id"]
                    for r in found
                )
                and found
            ),
            timeout=60,
        )
    finally:
        stop(worker)
        log.close()
    assert documents["raises"]["status"] == "failed"
    assert documents["raises"]["artefacts"]["links"]["notebook"].startswith(f"{files_url}/files/")
    # each ran in a process of its own, not the worker's
    pids = {run["infrastructure_pid"].rsplit(":", 1)[-1] for run in ended.values()}
    assert len(pids) == 2 and str(worker.pid) not in pids, pids
    # one ERROR record for the failure: the run's own, with the notebook's traceback, the
    # only traceback in the log (none of Prefect's engine)
    errors = [r["message"] for r in records if r["level"] >= 40]
    assert [e.splitlines()[0] for e in errors] == ["cell 3: ValueError: bad value 42"], errors
    assert [r["message"] for r in records if "Traceback" in r["message"]] == errors
