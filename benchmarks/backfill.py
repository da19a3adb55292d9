"""A backfill of 100 dates against 100 ``nbjobs run`` commands 8 at a time, on the local server.

A local server of its own (PostgreSQL, a fresh ``$NBJOBS_HOME``), warmed with one run;
then, alternated ``--rounds`` times: ``nbjobs backfill daily --every 1d`` over 100 dates
of ``examples/daily.ipynb`` at ``--max-concurrency 8`` (a fresh deployment each round,
without a schedule of its own, so every date runs and nothing else), and 100 whole ``nbjobs run examples/report.ipynb`` processes 8 at a
time (the rate the local server gives real use). Prints wall time and notebooks per
minute of each, and for the backfill its failures and its duplicates (ticks with more
than one run), read back from the API.

    .venv/bin/python -m benchmarks.backfill [--dates 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import date, timedelta
from typing import Any

from benchmarks.common import ROOT
from benchmarks.concurrency import Home, nbjobs_batch

DAILY = ROOT / "examples" / "daily.ipynb"


def backfill(home: Home, dates: int, at_once: int) -> dict[str, Any]:
    name = f"daily-{uuid.uuid4().hex[:6]}"
    done = home.nbjobs("deploy", str(DAILY), "--name", name)  # no schedule: no runs ahead
    assert done.returncode == 0, done.stderr
    start = date(2025, 1, 1)
    end = start + timedelta(days=dates - 1)
    started = time.perf_counter()
    done = home.nbjobs(
        "backfill",
        name,
        "--start",
        start.isoformat(),
        "--end",
        end.isoformat(),
        "--every",
        "1d",
        "--max-concurrency",
        str(at_once),
    )
    wall = time.perf_counter() - started
    deployment_id = home.api.deployment_id("run-notebook", name)
    runs = home.api.flow_runs({"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
    ticks = [run["expected_start_time"] for run in runs]
    return {
        "exit": done.returncode,
        "wall": wall,
        "per_minute": 60 * dates / wall,
        "runs": len(runs),
        "failed": sum(1 for run in runs if run["state"]["type"] != "COMPLETED"),
        "duplicates": len(ticks) - len(set(ticks)),
        "last_line": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dates", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--at-once", type=int, default=8)
    args = parser.parse_args()
    home = Home("postgresql")
    try:
        warm = home.nbjobs("run", str(ROOT / "examples" / "report.ipynb"))
        assert warm.returncode == 0, warm.stderr
        for round_ in range(1, args.rounds + 1):
            found = backfill(home, args.dates, args.at_once)
            print(
                f"round {round_}  backfill of {args.dates} dates, {args.at_once} at a time: "
                f"{found['wall']:.1f} s, {found['per_minute']:.1f} notebooks/min, "
                f"{found['runs']} runs, {found['failed']} failed, {found['duplicates']} "
                f"duplicates, exit {found['exit']} ({found['last_line']})",
                flush=True,
            )
            commands = nbjobs_batch(home, args.dates, args.at_once)
            print(
                f"round {round_}  {args.dates} x nbjobs run, {args.at_once} at a time: "
                f"{commands['per_minute']:.1f} notebooks/min, {commands['failed']} failed, "
                f"{commands['made_twice']} made twice",
                flush=True,
            )
    finally:
        home.close()


if __name__ == "__main__":
    main()
