"""What running a notebook through notebook-jobs costs, against papermill, in one run.

    .venv/bin/python benchmarks/overhead.py [--runs 10] [--batch 20] [--repeats 3]
        [--concurrency 2] [--database sqlite|postgresql]

Against a ``prefect server start`` of its own on 127.0.0.1: SQLite (Prefect's default,
as the README's first command uses) or PostgreSQL (the production set-up; started with
tests/services/postgres.sh, needs root). On a trivial 3-cell notebook:
  0. kernel start: a spawned ipykernel against a forked one (tasks/engine/kernels/fork.py),
     wall time until it answers and the CPU it spent;
  1. single run from Python: ``await run_notebook(...)`` in a plain process, with no
     executor of the caller's (the process's own: a kernel forked from its fork server,
     a new one per run, no pool; tasks.executors.process_executor), against
     papermill.execute_notebook in the same process, alternating; and the Prefect API
     requests one run makes (HTTP, by route; events go over a websocket, not counted);
  2. latency with pre-started kernels: the flow with a KernelPool in steady state (the
     pool has refilled between runs, as on a worker between requests), and back to back;
  3. batch throughput: run-notebooks (``--concurrency`` at a time, pool) against
     sequential papermill, notebooks per minute, each batch in a new process (imports
     and one warm-up run before the clock starts), with the peak memory of the whole
     process tree (kernels and the Prefect server included), ``--repeats`` times.
  4. with the local server's worker up (its own home, no PREFECT_API_URL):
     ``run_notebook_sync`` in a Python process against ``nbjobs run`` as a command,
     alternating (``--local-only``, a process of its own).
Each figure: median, p10, p90 over the repetitions; ratios to the baseline beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import TreeMemory, postgres_url, prefect_server, spread  # noqa: E402

os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

NOTEBOOK = ROOT / "benchmarks" / "three_cells.ipynb"
PHASES: dict[str, list[float]] = {}


def papermill_once(out: Path) -> float:
    import papermill

    t = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOK), str(out), progress_bar=False, log_output=False)
    return time.perf_counter() - t


async def kernel_start(servers: Any, folder: Path) -> tuple[float, float]:
    """Wall seconds until a new kernel answers, and the CPU seconds it spent.

    Forked from ``servers`` (a ``ForkServers``), or spawned when it is None.
    """
    import psutil

    from notebook_jobs.tasks.engine.kernels.client import (
        new_kernel_manager,
        shutdown_kernel,
        start_kernel,
    )
    from notebook_jobs.tasks.engine.kernels.fork import forking_with

    with forking_with(servers):
        km = new_kernel_manager("python3", Path(tempfile.mkdtemp(dir=folder)) / "k")
        t = time.perf_counter()
        kc = await start_kernel(km, folder)
    wall = time.perf_counter() - t
    times = psutil.Process(km.provisioner.pid).cpu_times()  # type: ignore[union-attr]
    await shutdown_kernel(km, kc)
    return wall, times.user + times.system


async def flow_once(store: Path, label: str = "") -> float:
    from notebook_jobs.flows.run_notebook import run_notebook

    called = datetime.now(timezone.utc)
    t = time.perf_counter()
    state = await run_notebook(notebook=str(NOTEBOOK), store=str(store), return_state=True)
    elapsed = time.perf_counter() - t
    assert state.is_completed(), state.message
    if label:  # where the time went, from the result's own timings
        timings = (await state.aresult()).timings
        before = (timings.started_at - called).total_seconds()
        for phase, value in (
            ("Prefect: flow run created, Running", before),
            ("staging", timings.stage_seconds),
            ("kernel start / connect", timings.kernel_start_seconds or 0.0),
            ("cells and report", timings.execute_seconds - (timings.kernel_start_seconds or 0)),
            ("HTML and upload", timings.store_seconds),
            (
                "body, other (task runs)",
                timings.total_seconds
                - timings.stage_seconds
                - timings.execute_seconds
                - timings.store_seconds,
            ),
            ("result.json, artifacts, Completed", elapsed - before - timings.total_seconds),
        ):
            PHASES.setdefault(f"{label}|{phase}", []).append(value)
    return elapsed


async def api_calls(store: Path) -> dict[str, int]:
    """The HTTP requests this process makes to Prefect's API for one run, by route
    (after the run: its logs and the last artifact are sent a moment later)."""
    import re

    import httpx

    counts: dict[str, int] = {}
    original = httpx.AsyncClient.send

    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        path = request.url.path.split("/api", 1)[-1]
        route = f"{request.method} {re.sub(r'[0-9a-f]{8}-[0-9a-f-]{27}', '{id}', path)}"
        counts[route] = counts.get(route, 0) + 1
        return await original(self, request, **kwargs)

    httpx.AsyncClient.send = send  # type: ignore[method-assign]
    try:
        await flow_once(store)
        await asyncio.sleep(3)  # the log worker's last batch
    finally:
        httpx.AsyncClient.send = original  # type: ignore[method-assign]
    return counts


def local_worker(args: argparse.Namespace, work: Path) -> None:
    """``run_notebook_sync`` against ``nbjobs run``, both handed to the local server's
    worker (this process has no PREFECT_API_URL; the server is started and stopped
    here, in its own home)."""
    from notebook_jobs.deployments.python_api import run_notebook_sync

    nbjobs = str(Path(sys.executable).parent / "nbjobs")
    subprocess.run([nbjobs, "server", "start"], check=True, capture_output=True)
    try:

        def command() -> float:
            t = time.perf_counter()
            subprocess.run([nbjobs, "run", str(NOTEBOOK)], check=True, capture_output=True)
            return time.perf_counter() - t

        def python() -> float:
            t = time.perf_counter()
            assert run_notebook_sync(str(NOTEBOOK)).success
            return time.perf_counter() - t

        command(), python()  # warm up: imports, the worker's first run
        commands, calls = [], []
        for _ in range(args.runs):
            commands.append(command())
            calls.append(python())
    finally:
        subprocess.run([nbjobs, "server", "stop"], check=True, capture_output=True)
    ratio = statistics.median(calls) / statistics.median(commands)
    print("4. with the local server's worker up, a pre-started kernel per run")
    print(f"   nbjobs run (a command)       {spread(commands)}")
    print(f"   run_notebook_sync(...)       {spread(calls)}  ratio {ratio:.2f}")


def print_phases(label: str) -> None:
    for key, values in PHASES.items():
        if key.startswith(label + "|"):
            print(f"      {key.split('|', 1)[1]:<36} median {statistics.median(values):6.3f} s")


async def measure(args: argparse.Namespace, work: Path) -> None:
    from notebook_jobs.tasks.engine.kernels.client import kernel_environment
    from notebook_jobs.tasks.engine.kernels.fork import ForkServers
    from notebook_jobs.tasks.executors import LocalExecutor
    from notebook_jobs.tasks.runtime import using_executor

    store = work / "store"
    print("0. kernel start (until it answers; CPU of the kernel process)")
    # the fork server starts once per owner; kernels fork once it is ready
    servers = ForkServers()
    await asyncio.to_thread(servers.wait_for, sys.executable, kernel_environment())
    for launcher, owner in (("spawn", None), ("fork", servers)):
        await kernel_start(owner, work)
        starts = [await kernel_start(owner, work) for _ in range(args.runs)]
        print(f"   {launcher:<8} wall {spread([w for w, _ in starts])}")
        print(f"   {'':<8} CPU  {spread([c for _, c in starts])}")
    # as a script calls it: no executor of its own, so the process's (a fork server)
    await flow_once(store)  # warm up imports, the server, nbconvert's templates
    papermill_once(work / "warm.ipynb")
    flow_times, pm_times = [], []
    for i in range(args.runs):
        flow_times.append(await flow_once(store, "fresh"))
        pm_times.append(await asyncio.to_thread(papermill_once, work / f"pm{i}.ipynb"))
    pm = statistics.median(pm_times)
    print("1. single run from Python, a new kernel per run")
    print(f"   papermill.execute_notebook   {spread(pm_times)}")
    print(
        f"   await run_notebook(...)      {spread(flow_times)}  ratio {statistics.median(flow_times) / pm:.2f}"
    )
    print_phases("fresh")
    calls = await api_calls(store)
    print(f"   Prefect API requests of one run: {sum(calls.values())}")
    for route, count in sorted(calls.items()):
        print(f"      {count} {route}")

    steady, back_to_back = [], []
    async with LocalExecutor(pool_size=2, fork_servers=servers) as pooled:
        with using_executor(pooled):
            await flow_once(store)  # starts the pool
            for _ in range(args.runs):
                await asyncio.sleep(1.0)  # the pool refills between requests
                steady.append(await flow_once(store, "pool"))
            for _ in range(args.runs):
                back_to_back.append(await flow_once(store))
    servers.close()
    print("2. pre-started kernels (pool of 2)")
    print(
        f"   steady state                 {spread(steady)}  ratio {statistics.median(steady) / pm:.2f} of papermill"
    )
    print_phases("pool")
    print(f"   back to back                 {spread(back_to_back)}")

    # Each batch runs in a process of its own, as on a worker. (Run in this process
    # after the measurements above, the same batch was 2 to 4 times slower, with this
    # process idle most of the time; not understood yet, see docs/performance.md.)
    rates_pm, rates_batch, memory_pm, memory_batch = [], [], [], []
    for _ in range(args.repeats):
        for kind, rates, memory in (
            ("papermill", rates_pm, memory_pm),
            ("run-notebooks", rates_batch, memory_batch),
        ):
            with TreeMemory() as tree:
                rate = await asyncio.to_thread(batch_in_subprocess, kind, args, work)
            rates.append(rate)
            memory.append(tree.peak / 2**20)
    ratio = statistics.median(rates_batch) / statistics.median(rates_pm)
    print(f"3. batch of {args.batch} notebooks, {args.repeats} times (each in a new process)")
    print(f"   sequential papermill         {spread(rates_pm, '/min')}")
    print(
        f"   run-notebooks ({args.concurrency}, pool)      {spread(rates_batch, '/min')}  ratio {ratio:.2f}"
    )
    print(
        f"   peak memory, process tree: papermill {statistics.median(memory_pm):.0f} MiB, "
        f"run-notebooks {statistics.median(memory_batch):.0f} MiB (medians)"
    )


def batch_in_subprocess(kind: str, args: argparse.Namespace, work: Path) -> float:
    """Notebooks per minute of one batch, run by ``overhead.py --batch-only KIND``."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--batch-only",
            kind,
            "--batch",
            str(args.batch),
            "--concurrency",
            str(args.concurrency),
            "--work",
            str(work),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


async def one_batch(kind: str, args: argparse.Namespace, work: Path) -> float:
    """Run one batch in this process (imports and the first run before the clock starts)."""
    from notebook_jobs.flows.run_notebook import run_notebook
    from notebook_jobs.flows.run_notebooks import run_notebooks

    store = work / "store"
    if kind == "papermill":
        papermill_once(work / "warm.ipynb")
        t = time.perf_counter()
        for i in range(args.batch):
            papermill_once(work / f"seq-{os.getpid()}-{i}.ipynb")
    else:
        await run_notebook(notebook=str(NOTEBOOK), store=str(store))
        t = time.perf_counter()
        result = await run_notebooks(
            notebook=str(NOTEBOOK),
            grid={"run": list(range(args.batch))},
            store=str(store),
            max_concurrency=args.concurrency,
        )
        assert result.succeeded == args.batch
    return 60 * args.batch / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--batch-only", choices=("papermill", "run-notebooks"), help=argparse.SUPPRESS
    )
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--local-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_only:  # one batch, in this new process, against the caller's server
        print(asyncio.run(one_batch(args.batch_only, args, args.work)))
        return
    if args.local_only:  # phase 4, in this new process, with no server configured
        local_worker(args, args.work)
        return
    import papermill
    import prefect

    print(
        f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
        f"prefect {prefect.__version__}; papermill {papermill.__version__}; "
        f"server database: {args.database}"
    )
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        database_url = postgres_url() if args.database == "postgresql" else None
        with prefect_server(work, database_url) as api_url:
            os.environ["PREFECT_API_URL"] = api_url
            os.environ["NBJOBS_HOME"] = str(work / "home")
            asyncio.run(measure(args, work))
        local = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        local.update(NBJOBS_HOME=str(work / "local"), PREFECT_HOME=str(work / "local-client"))
        subprocess.run(
            [sys.executable, __file__, "--local-only", "--runs", str(args.runs), "--work", folder],
            env=local,
            check=True,
        )


if __name__ == "__main__":
    main()
