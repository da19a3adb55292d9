"""A repair, as a user asks for it: ``nbjobs repair RUN`` on the local server.

On a local server of its own (a fresh ``$NBJOBS_HOME``), each round runs
``tests/data/needs_file.ipynb`` (its cell 3 reads a file that is not there), writes the
file and times ``nbjobs repair RUN``: once with the failed run's kernel kept (warm), once
with ``--keep-failed-kernel 0`` on the failed run (cold: cells 0 to 2 run again),
alternating. Prints the whole command's time and how long after the repaired run was
created (the command's request to the API) its first cell started, from the run's own
timings.

    .venv/bin/python benchmarks/repair.py --rounds 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import BIN, ROOT, spread
from notebook_jobs.deployments.api import PrefectHTTP

NOTEBOOK = ROOT / "tests" / "data" / "needs_file.ipynb"


def nbjobs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nbjobs"), *args], env=env, capture_output=True, text=True, timeout=600
    )


def one_repair(
    env: dict[str, str], folder: Path, keep: bool, api: PrefectHTTP
) -> tuple[float, float]:
    """The repair command's seconds, and from its request to the repaired run's first cell."""
    (folder / "input.txt").unlink(missing_ok=True)
    args = ["run", str(folder / NOTEBOOK.name), "--json"]
    failed = nbjobs(env, *args, *([] if keep else ["--keep-failed-kernel", "0"]))
    run_id = json.loads(failed.stdout)["flow_run_id"]
    (folder / "input.txt").write_text("here\n")
    began = time.perf_counter()
    done = nbjobs(env, "repair", run_id, "--json")
    seconds = time.perf_counter() - began
    result = json.loads(done.stdout)
    assert result["status"] == "completed", done.stderr
    assert result["repaired_from"]["mode"] == ("warm" if keep else "cold")
    timings = result["timings"]
    first_cell = (
        datetime.fromisoformat(timings["started_at"]).timestamp()
        + timings["stage_seconds"]
        + (timings["kernel_start_seconds"] or 0.0)
    )
    created = api.flow_run(result["flow_run_id"])["created"].replace("Z", "+00:00")
    return seconds, first_cell - datetime.fromisoformat(created).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nbjobs-repair-"))
    env = {**os.environ, "NBJOBS_HOME": str(home), "PREFECT_HOME": str(home / "prefect")}
    folder = home / "notebooks"
    folder.mkdir()
    shutil.copy(NOTEBOOK, folder)
    found: dict[str, tuple[list[float], list[float]]] = {"warm": ([], []), "cold": ([], [])}
    try:
        nbjobs(env, "server", "start")
        status = json.loads(nbjobs(env, "server", "status", "--json").stdout)
        api = PrefectHTTP(status["api_url"], auth_string=status["login"])
        for _ in range(args.rounds):
            for mode in ("warm", "cold"):
                command, first = one_repair(env, folder, mode == "warm", api)
                found[mode][0].append(command)
                found[mode][1].append(first)
    finally:
        nbjobs(env, "server", "stop")
    for mode, (commands, firsts) in found.items():
        print(f"{mode}: nbjobs repair      {spread(commands)}")
        print(f"{mode}: request to first cell {spread(firsts)}")


if __name__ == "__main__":
    main()
