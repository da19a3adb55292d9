"""What a cache hit costs against the run it replaces, as a user runs both.

    .venv/bin/python benchmarks/cache.py [--runs 5] [--seconds 5]

Whole ``nbjobs run`` processes on the local server (a fresh ``$NBJOBS_HOME`` of its
own, started first and stopped at the end), alternating in one loop:
  - ``nbjobs run analysis.ipynb --cache --refresh``: the notebook executes (and is
    recorded), an analysis that computes for ``--seconds``;
  - ``nbjobs run analysis.ipynb --cache``: a hit, the same request: nothing executes;
  - ``papermill analysis.ipynb out.ipynb``: the tool a user would use instead.
Prints median, p10, p90 of each, and the hit's time as a fraction of the run's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import BIN, spread  # noqa: E402

NOTEBOOK = ROOT / "benchmarks" / "analysis.ipynb"


def timed(command: list[str], env: dict[str, str], expect: str = "") -> float:
    t = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t
    if done.returncode != 0 or expect not in done.stdout:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nbjobs-cache-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NBJOBS_"))}
    env.update(NBJOBS_HOME=str(home), PREFECT_HOME=str(home / "prefect-client"))
    nbjobs = [str(BIN / "nbjobs"), "run", str(NOTEBOOK), "-p", "seconds", str(args.seconds)]
    subprocess.run([str(BIN / "nbjobs"), "server", "start"], env=env, check=True)
    times: dict[str, list[float]] = {"run": [], "hit": [], "papermill": []}
    try:
        timed([*nbjobs, "--cache"], env)  # warm: the worker's kernels, the first record
        for _ in range(args.runs):
            times["run"].append(timed([*nbjobs, "--cache", "--refresh"], env))
            times["hit"].append(timed([*nbjobs, "--cache"], env, expect="cached: the result"))
            times["papermill"].append(
                timed(
                    [
                        str(BIN / "papermill"),
                        str(NOTEBOOK),
                        str(home / "out.ipynb"),
                        "-p",
                        "seconds",
                        str(args.seconds),
                    ],
                    env,
                )
            )
    finally:
        subprocess.run([str(BIN / "nbjobs"), "server", "stop"], env=env, check=False)
    print(f"notebook computing for {args.seconds:g} s, whole processes, alternating:")
    for name, values in times.items():
        print(f"  {name:<10} {spread(values)}")
    ratio = statistics.median(times["hit"]) / statistics.median(times["run"])
    print(f"  a hit takes {ratio:.3f} of the run it replaces (median / median)")


if __name__ == "__main__":
    main()
