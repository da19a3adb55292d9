"""Trigger-to-completed latency of a trivial notebook on a served deployment, over HTTP.

Starts its own ``prefect server start`` (SQLite, 127.0.0.1) and ``nbjobs serve``,
triggers runs one at a time with plain HTTP and polls them to a final state, and
measures bare papermill on the same notebook in the same run as the baseline.

    .venv/bin/python benchmarks/http_latency.py [--runs 10]

Configurations measured:
  prefect-defaults  ``nbjobs serve --isolation process`` with Prefect's own worker
                    polling (10 s): where this project started
  process           a Python subprocess per run, polling every 0.5 s
  in-process        nbjobs's default: runs as tasks of the worker, polling every 0.5 s
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import BIN, postgres_url, prefect_server, spread  # noqa: E402
from notebook_jobs.blocks.exceptions import APIError  # noqa: E402
from notebook_jobs.deployments.api import PrefectHTTP  # noqa: E402
from tests.processes import stop  # noqa: E402

NOTEBOOK = ROOT / "tests" / "data" / "trivial.ipynb"
POLL_SECONDS = 0.05


def papermill_baseline(runs: int, workdir: Path) -> tuple[list[float], list[float]]:
    import papermill

    in_process, cli = [], []
    for i in range(runs):
        t = time.perf_counter()
        papermill.execute_notebook(
            str(NOTEBOOK), str(workdir / f"pm-{i}.ipynb"), progress_bar=False
        )
        in_process.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(
            [
                str(BIN / "papermill"),
                "--no-progress-bar",
                str(NOTEBOOK),
                str(workdir / f"pmcli-{i}.ipynb"),
            ],
            check=True,
            capture_output=True,
        )
        cli.append(time.perf_counter() - t)
    return in_process, cli


def state_times(api: PrefectHTTP, run_id: str) -> dict[str, float]:
    states = api.request("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
    stamps = {s["type"]: datetime.fromisoformat(s["timestamp"]) for s in states}
    created = min(stamps.values())
    return {k: (v - created).total_seconds() for k, v in stamps.items()}


def measure(api: PrefectHTTP, runs: int) -> tuple[list[float], list[dict[str, float]]]:
    latencies, phases = [], []
    for i in range(runs + 1):  # the first run warms up imports and is not counted
        t = time.perf_counter()
        run_id = api.trigger("run-notebook", "adhoc", {"notebook": str(NOTEBOOK)})
        while True:
            run = api.flow_run(run_id)
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - t
        assert run["state"]["type"] == "COMPLETED", run["state"]
        if i:
            latencies.append(elapsed)
            phases.append(state_times(api, run_id))
    return latencies, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--configs", default="in-process,process,prefect-defaults")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nbjobs-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", NBJOBS_HOME=str(home / "nbjobs"))
    database_url = postgres_url() if args.database == "postgresql" else None
    try:
        with prefect_server(home, database_url) as api_url:
            run_configs(args, env, home, api_url)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_configs(args: argparse.Namespace, env: dict[str, str], home: Path, api_url: str) -> None:
    """Papermill's baseline, then each configuration of nbjobs serve, against one server."""
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    import papermill
    import prefect

    print(
        f"prefect {prefect.__version__}, papermill {papermill.__version__}; {args.runs} runs each"
    )
    pm_in, pm_cli = papermill_baseline(args.runs, home)
    print(f"{'papermill.execute_notebook':28} {spread(pm_in)}")
    print(f"{'papermill CLI':28} {spread(pm_cli)}")
    api = PrefectHTTP(api_url)
    for config in args.configs.split(","):
        serve_env = {**env, "PREFECT_API_URL": api_url}
        isolation = "in-process" if config == "in-process" else "process"
        if config == "prefect-defaults":
            serve_env["PREFECT_WORKER_QUERY_SECONDS"] = "10"
            serve_env["PREFECT_WORKER_PREFETCH_SECONDS"] = "10"
        worker = subprocess.Popen(
            [str(BIN / "nbjobs"), "serve", "--isolation", isolation],
            env=serve_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    api.deployment_id("run-notebook", "adhoc")
                    break
                except APIError:
                    time.sleep(0.5)
            time.sleep(2)
            latencies, phases = measure(api, args.runs)
        finally:
            stop(worker)
        print(
            f"{'served, ' + config:28} {spread(latencies)}  "
            f"x{statistics.median(latencies) / statistics.median(pm_cli):.2f} papermill CLI"
        )
        for phase in ("PENDING", "RUNNING", "COMPLETED"):
            values = [p[phase] for p in phases if phase in p]
            if values:
                print(f"    created -> {phase:<10} median {statistics.median(values):6.2f} s")


if __name__ == "__main__":
    main()
