"""What running a notebook through notebook-jobs costs, against papermill, in one run.

    .venv/bin/python benchmarks/overhead.py [--runs 10] [--batch 20]

Measured against Prefect's temporary server (SQLite), on a trivial 3-cell notebook:
  1. single run: the run-notebook flow (local store, fresh kernel) against
     papermill.execute_notebook in the same process, alternating;
  2. latency with pre-started kernels: the flow with a KernelPool (steady state: the
     pool has refilled between runs, as on a worker between requests), and back to back;
  3. batch throughput: run-notebooks (2 at a time, pool) against sequential papermill,
     in notebooks per minute, with the peak memory of the whole process tree.
Each figure: median, p10, p90 over the repetitions; ratios to the baseline beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

NOTEBOOK = ROOT / "benchmarks" / "three_cells.ipynb"


def spread(values: list[float], unit: str = "s") -> str:
    values = sorted(values)
    q = statistics.quantiles(values, n=10) if len(values) >= 2 else values * 9
    return f"median {statistics.median(values):7.3f} {unit}  p10 {q[0]:7.3f}  p90 {q[-1]:7.3f}  (n={len(values)})"


class TreeMemory:
    """Peak resident memory of this process and all its children, sampled every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.peak = 0
        self._stop = threading.Event()
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for process in [self._me, *self._me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def papermill_once(out: Path) -> float:
    import papermill

    t = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOK), str(out), progress_bar=False, log_output=False)
    return time.perf_counter() - t


PHASES: dict[str, list[float]] = {}


async def flow_once(store: Path, label: str = "") -> float:
    from flows.run_notebook import run_notebook

    t = time.perf_counter()
    state = await run_notebook(notebook=str(NOTEBOOK), store=str(store), return_state=True)
    elapsed = time.perf_counter() - t
    assert state.is_completed(), state.message
    if label:  # where the time went, from the result's own timings
        timings = (await state.aresult()).timings
        inside = timings.stage_seconds + timings.execute_seconds + timings.store_seconds
        for phase, value in (
            ("stage", timings.stage_seconds),
            ("kernel start", timings.kernel_start_seconds or 0.0),
            ("execute (incl. kernel start)", timings.execute_seconds),
            ("HTML, store, artifacts", timings.store_seconds),
            ("flow run bookkeeping", elapsed - inside),
        ):
            PHASES.setdefault(f"{label}|{phase}", []).append(value)
    return elapsed


def print_phases(label: str) -> None:
    for key, values in PHASES.items():
        if key.startswith(label + "|"):
            print(f"      {key.split('|', 1)[1]:<30} median {statistics.median(values):6.3f} s")


async def measure(runs: int, batch: int, work: Path) -> None:
    from flows.run_notebooks import run_notebooks
    from tasks.kernel_pool import POOL_SIZE_ENV, close_shared_pools

    store = work / "store"
    await flow_once(store)  # warm up imports, the server, nbconvert's templates
    papermill_once(work / "warm.ipynb")

    flow_times, pm_times = [], []
    for i in range(runs):
        flow_times.append(await flow_once(store, "fresh"))
        pm_times.append(await asyncio.to_thread(papermill_once, work / f"pm{i}.ipynb"))
    pm = statistics.median(pm_times)
    print("1. single run, fresh kernel")
    print(f"   papermill.execute_notebook   {spread(pm_times)}")
    print(
        f"   run-notebook flow            {spread(flow_times)}  ratio {statistics.median(flow_times) / pm:.2f}"
    )
    print_phases("fresh")

    os.environ[POOL_SIZE_ENV] = "2"
    await flow_once(store)  # starts the pool
    steady, back_to_back = [], []
    for _ in range(runs):
        await asyncio.sleep(1.5)  # the pool refills between requests
        steady.append(await flow_once(store, "pool"))
    for _ in range(runs):
        back_to_back.append(await flow_once(store))
    await close_shared_pools()
    os.environ.pop(POOL_SIZE_ENV, None)
    print("2. pre-started kernels (pool of 2)")
    print(
        f"   steady state                 {spread(steady)}  ratio {statistics.median(steady) / pm:.2f} of papermill"
    )
    print_phases("pool")
    print(f"   back to back                 {spread(back_to_back)}")

    t = time.perf_counter()
    with TreeMemory() as pm_memory:
        for i in range(batch):
            papermill_once(work / f"seq{i}.ipynb")
    sequential = time.perf_counter() - t
    t = time.perf_counter()
    with TreeMemory() as batch_memory:
        result = await run_notebooks(
            notebook=str(NOTEBOOK),
            grid={"run": list(range(batch))},
            store=str(store),
            max_concurrency=2,
        )
    batched = time.perf_counter() - t
    assert result.succeeded == batch
    rate_pm, rate_batch = 60 * batch / sequential, 60 * batch / batched
    print(f"3. batch of {batch} notebooks")
    print(
        f"   sequential papermill         {rate_pm:7.1f} notebooks/min  peak memory {pm_memory.peak / 2**20:7.0f} MiB"
    )
    print(
        f"   run-notebooks (2, pool)      {rate_batch:7.1f} notebooks/min  peak memory {batch_memory.peak / 2**20:7.0f} MiB  ratio {rate_batch / rate_pm:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    import papermill
    import prefect

    print(
        f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
        f"prefect {prefect.__version__}; papermill {papermill.__version__}"
    )
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as work, prefect_test_harness(server_startup_timeout=60):
        os.environ["NBJOBS_HOME"] = str(Path(work) / "home")
        asyncio.run(measure(args.runs, args.batch, Path(work)))


if __name__ == "__main__":
    main()
