"""What a new user sees: `nbjobs run` against the papermill CLI, as whole processes.

On the embedded default (no PREFECT_API_URL, an empty $NBJOBS_HOME and PREFECT_HOME):

1. the first `nbjobs run`, which starts the local Prefect server and its worker;
2. `papermill IN OUT -p n 12` and `nbjobs run IN OUT -p n 12`, alternated, with
   the server already up;
3. `nbjobs inspect IN` and `papermill --help-notebook IN`, alternated.

Every command is a new process started the way a shell starts it, and timed from
outside. `--busy` keeps both cores busy (two `while True` loops) during part 1, as
a loaded laptop or CI machine would. The local server is stopped at the end.

    .venv/bin/python benchmarks/first_contact.py [--runs 10] [--busy]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BIN, ROOT, spread

NOTEBOOK = ROOT / "examples" / "report.ipynb"


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall time of one command, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def busy_loops(count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--busy", action="store_true", help="both cores busy during the first run")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nbjobs-first-contact-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NBJOBS_"))}
    env.update(
        NBJOBS_HOME=str(work / "nbjobs-home"),
        PREFECT_HOME=str(work / "prefect-home"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    nbjobs, papermill = str(BIN / "nbjobs"), str(BIN / "papermill")
    # the same command line as papermill's, OUTPUT included: what a user swaps
    run = [nbjobs, "run", str(NOTEBOOK), str(work / "ours.ipynb"), "-p", "n", "12"]
    loops = busy_loops(2) if args.busy else []
    try:
        try:
            first = timed(run, env, work)
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
        timed(run, env, work)  # one warm-up each, not counted
        timed([papermill, str(NOTEBOOK), str(work / "out.ipynb"), "-p", "n", "12"], env, work)
        ours, theirs = [], []
        for _ in range(args.runs):
            theirs.append(
                timed(
                    [papermill, str(NOTEBOOK), str(work / "out.ipynb"), "-p", "n", "12"], env, work
                )
            )
            ours.append(timed(run, env, work))
        inspect, help_notebook = [], []
        for _ in range(args.runs):
            help_notebook.append(timed([papermill, "--help-notebook", str(NOTEBOOK)], env, work))
            inspect.append(timed([nbjobs, "inspect", str(NOTEBOOK)], env, work))
    finally:
        subprocess.run([nbjobs, "server", "stop"], env=env, capture_output=True)

    ratio = statistics.median(ours) / statistics.median(theirs)
    inspect_ratio = statistics.median(inspect) / statistics.median(help_notebook)
    print(
        f"first nbjobs run, server start included{' (both cores busy)' if args.busy else ''}: "
        f"{first:.1f} s"
    )
    print(f"papermill CLI          {spread(theirs)}")
    print(f"nbjobs run (warm)      {spread(ours)}   ratio {ratio:.2f}")
    print(f"papermill --help-nb    {spread(help_notebook)}")
    print(f"nbjobs inspect         {spread(inspect)}   ratio {inspect_ratio:.2f}")


if __name__ == "__main__":
    main()
