"""Many commands at once on the local server: PostgreSQL against SQLite, and papermill.

For each database, a local server of its own (a fresh ``$NBJOBS_HOME``), then for N =
1, 4, 8, 16 at a time, ``--runs`` whole ``nbjobs run`` processes of the README's
example, every exit status checked; between them, papermill's CLI run one after
another on the same notebook (what a user would use instead), so both see the same
machine. Then 10 deployments whose cron fires at the same minute. Prints notebooks
per minute, failed commands, runs made twice, the slowest command, and how often
the server's log says ``database is locked``.

    .venv/bin/python -m benchmarks.concurrency [--runs 32] [--databases postgresql sqlite]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, ROOT
from notebook_jobs.blocks.exceptions import APIError
from notebook_jobs.deployments.api import PrefectHTTP

NOTEBOOK = ROOT / "examples" / "report.ipynb"
NBJOBS = str(BIN / "nbjobs")
PROBE_INTERVAL_SECONDS = 0.5


class Home:
    """A local server of its own, on one database."""

    def __init__(self, database: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"nbjobs-bench-{database}-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(NBJOBS_HOME=str(self.dir / "home"), PREFECT_HOME=str(self.dir / "p"))
        done = self.nbjobs("server", "start", "--database", database)
        assert done.returncode == 0, done.stderr
        status = json.loads(self.nbjobs("server", "status", "--json").stdout)
        self.api = PrefectHTTP(status["api_url"], auth_string=status["login"])
        self.log = Path(status["server_log"])

    def nbjobs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([NBJOBS, *args], env=self.env, capture_output=True, text=True)

    def close(self) -> None:
        self.nbjobs("server", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def timed(
    command: list[str], env: dict[str, str], cwd: Path | None = None
) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - started, done.returncode, done.stderr[-300:]


class Prober:
    """Asks the API for one flow run every ``PROBE_INTERVAL_SECONDS`` while a batch runs,
    as the UI and every follower do: the slowest answer is the worst stall a request
    met (a command's own time includes its turn in the worker's queue)."""

    def __init__(self, api: PrefectHTTP) -> None:
        self.api = api
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)
        self._thread.start()

    def _probe(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL_SECONDS):
            started = time.perf_counter()
            try:
                self.api.request("POST", "/flow_runs/filter", json={"limit": 1}, deadline=600)
            except APIError:
                self.latencies.append(float("inf"))  # a request that never got its answer
                continue
            self.latencies.append(time.perf_counter() - started)

    def close(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.latencies


def nbjobs_batch(home: Home, runs: int, at_once: int) -> dict[str, Any]:
    label = uuid.uuid4().hex[:8]
    commands = [
        [NBJOBS, "run", str(NOTEBOOK), "-p", "n", str(i), "-p", "label", label] for i in range(runs)
    ]
    prober = Prober(home.api)
    started = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        results = list(pool.map(lambda c: timed(c, home.env), commands))
    wall = time.perf_counter() - started
    probes = prober.close()
    found = home.api.flow_runs({"flow_runs": {"tags": {"all_": ["trigger:cli"]}}})
    made = [r for r in found if r["parameters"].get("parameters", {}).get("label") == label]
    ns = [r["parameters"]["parameters"]["n"] for r in made]
    return {
        "per_minute": 60 * runs / wall,
        "failed": sum(1 for _, code, _ in results if code != 0),
        "errors": sorted({err.strip().splitlines()[-1] for _, c, err in results if c and err}),
        "made_twice": len(ns) - len(set(ns)),
        "missing": runs - len(set(ns)),
        "slowest": max(seconds for seconds, _, _ in results),
        "probes": len(probes),
        "slowest_request": max(probes, default=0.0),
        "requests_over_5s": sum(1 for seconds in probes if seconds > 5),
    }


def papermill_sequence(runs: int, folder: Path) -> float:
    """Notebooks per minute, papermill's CLI one after another."""
    started = time.perf_counter()
    for i in range(runs):
        out = folder / f"out-{i}.ipynb"
        _, code, err = timed(
            [
                str(BIN / "papermill"),
                "--log-level",
                "ERROR",
                str(NOTEBOOK),
                str(out),
                "-p",
                "n",
                str(i),
            ],
            dict(os.environ),
            cwd=folder,  # the notebook writes its CSV in its working folder
        )
        assert code == 0, err
    return 60 * runs / (time.perf_counter() - started)


def same_minute_crons(home: Home, count: int = 10) -> dict[str, Any]:
    """``count`` deployments on ``* * * * *``: the runs of one minute, all Completed?"""
    names = [f"cron-{i}-{uuid.uuid4().hex[:4]}" for i in range(count)]
    for name in names:
        done = home.nbjobs("deploy", str(NOTEBOOK), "--name", name, "--cron", "* * * * *")
        assert done.returncode == 0, done.stderr
    now = datetime.datetime.now(datetime.timezone.utc)
    minute = (now + datetime.timedelta(minutes=2)).replace(second=0, microsecond=0)
    time.sleep(max(0.0, (minute - now).total_seconds()) + 45)  # that minute's runs end
    runs = home.api.request(
        "POST",
        "/flow_runs/filter",
        json={"flow_runs": {"tags": {"all_": ["trigger:schedule"]}}, "limit": 200},
    ).json()
    at = [
        r
        for r in runs
        if r["expected_start_time"]
        and datetime.datetime.fromisoformat(r["expected_start_time"]) == minute
    ]
    states = [r["state"]["type"] for r in at]
    return {
        "deployments": count,
        "runs_that_minute": len(at),
        "completed": states.count("COMPLETED"),
        "latest_end_seconds": max(
            (
                (datetime.datetime.fromisoformat(r["end_time"]) - minute).total_seconds()
                for r in at
                if r.get("end_time")
            ),
            default=None,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--papermill-runs", type=int, default=8)
    parser.add_argument("--at-once", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--databases", nargs="+", default=["postgresql", "sqlite"])
    parser.add_argument("--no-cron", action="store_true")
    options = parser.parse_args()
    print(f"{os.cpu_count()} cores; {options.runs} runs of {NOTEBOOK.name} per row")
    scratch = Path(tempfile.mkdtemp(prefix="nbjobs-bench-papermill-"))
    for database in options.databases:
        home = Home(database)
        try:
            home.nbjobs("run", str(NOTEBOOK))  # warm: the worker's kernels are up
            for at_once in options.at_once:
                papermill = papermill_sequence(options.papermill_runs, scratch)
                row = nbjobs_batch(home, options.runs, at_once)
                locked = home.log.read_text(errors="replace").count("database is locked")
                print(
                    f"{database:10} {at_once:2} at once: {row['per_minute']:6.1f}/min "
                    f"({row['per_minute'] / papermill:4.2f}x papermill's {papermill:5.1f}/min), "
                    f"failed {row['failed']}, made twice {row['made_twice']}, "
                    f"missing {row['missing']}, slowest command {row['slowest']:5.1f} s, "
                    f"slowest of {row['probes']} requests {row['slowest_request']:5.2f} s "
                    f"({row['requests_over_5s']} over 5 s), "
                    f"'database is locked' in the log so far: {locked}",
                    flush=True,
                )
                for error in row["errors"][:3]:
                    print(f"    {error}")
            if not options.no_cron:
                print(f"{database:10} {json.dumps(same_minute_crons(home))}", flush=True)
        finally:
            home.close()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
