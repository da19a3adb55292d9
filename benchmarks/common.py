"""What the benchmarks share: spreads, a Prefect server of their own, process-tree memory."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from notebook_jobs.blocks.exceptions import LocalServerError
from tests.processes import free_port, start_prefect_server, stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def spread(values: list[float], unit: str = "s") -> str:
    """``median 0.412 s  p10 0.380  p90 0.530  (n=10)``."""
    values = sorted(values)
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) >= 2 else values * 9
    return (
        f"median {statistics.median(values):7.3f} {unit}  p10 {q[0]:7.3f}  p90 {q[-1]:7.3f}  "
        f"(n={len(values)})"
    )


def postgres_url(database: str = "nbjobs_bench") -> str:
    """An empty PostgreSQL database on 127.0.0.1 (tests/services/postgres.sh; needs root)."""
    script = ROOT / "tests" / "services" / "postgres.sh"
    return subprocess.run(
        ["bash", str(script), database], check=True, capture_output=True, text=True
    ).stdout.strip()


@contextlib.contextmanager
def prefect_server(home: Path, database_url: str | None = None) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 (SQLite in ``home``, or ``database_url``).

    Yields the API URL; the server is stopped on exit.
    """
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home / "prefect-server"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    try:
        server = start_prefect_server(port, env, home / "prefect-server.log")
    except LocalServerError as error:
        raise SystemExit(str(error)) from None
    try:
        yield api_url
    finally:
        stop(server)


_SAMPLER = """
import os, sys, time, psutil
root = psutil.Process(int(sys.argv[1]))
me = os.getpid()  # not counted
peak = 0
while True:
    total = 0
    try:
        for process in [root, *root.children(recursive=True)]:
            if process.pid == me:
                continue
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        break
    peak = max(peak, total)
    print(peak, flush=True)
    time.sleep(float(sys.argv[2]))
"""


class TreeMemory:
    """Peak resident memory of this process and all its children.

    Sampled by a separate process: walking the process tree is many system calls, and
    in a thread of this process it would compete for the GIL with the runs it measures.
    """

    def __init__(self, interval_seconds: float = 0.1) -> None:
        self.peak = 0
        self._interval = interval_seconds
        self._sampler: subprocess.Popen[str] | None = None

    def __enter__(self) -> TreeMemory:
        self._sampler = subprocess.Popen(
            [sys.executable, "-c", _SAMPLER, str(os.getpid()), str(self._interval)],
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._sampler is not None
        time.sleep(self._interval)  # one more sample of the end state
        self._sampler.terminate()
        out, _ = self._sampler.communicate()
        samples = [int(line) for line in out.split() if line.strip().isdigit()]
        self.peak = max(samples, default=0)
