"""Papermill's own test notebooks through papermill's CLI and through `nbjobs run`.

For each notebook of a folder (papermill's ``papermill/tests/notebooks``), both
commands run with the same arguments, each in its own copy of the folder and from
it, and the script compares what a user compares: the exit status (zero or not),
whether OUTPUT was written, and each code cell's outputs and the injected cell
(``tests/deployments/test_papermill_parity.py:seen``). It uses the local server of
an empty ``$NBJOBS_HOME``, and stops it at the end.

    git clone https://github.com/nteract/papermill /tmp/papermill
    .venv/bin/python benchmarks/papermill_corpus.py /tmp/papermill/papermill/tests/notebooks
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BIN
from tests.deployments.test_papermill_parity import seen

# the arguments papermill's own tests pass these notebooks (tests/test_cli.py, test_execute.py)
ARGUMENTS = {
    "simple_execute.ipynb": ["-p", "msg", "Hello"],
    "complex_parameters.ipynb": ["-p", "msg", "Hello", "-p", "a", "3"],
    "nb_version_4.4.ipynb": ["-p", "var", "2"],
    "no_parameters.ipynb": ["-p", "var", "1"],
    "report_mode_test.ipynb": ["--report-mode", "-p", "a", "2"],
    "result_no_exec.ipynb": ["-p", "foo", "2"],
    "test_autosave.ipynb": ["--autosave-cell-every", "1"],
    "test_logging.ipynb": ["--log-output"],
}
TIMEOUT_SECONDS = 300


def run(command: list[str], folder: Path, env: dict[str, str]) -> tuple[int, str]:
    try:
        done = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        return -1, f"no answer within {TIMEOUT_SECONDS} s"
    return done.returncode, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nbjobs-papermill-corpus-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NBJOBS_"))}
    env.update(NBJOBS_HOME=str(work / "home"), PREFECT_HOME=str(work / "prefect-home"))
    tools = {"papermill": [str(BIN / "papermill")], "nbjobs": [str(BIN / "nbjobs"), "run"]}
    same = 0
    notebooks = sorted(args.folder.glob("*.ipynb"))
    try:
        for notebook in notebooks:
            found = {}
            for name, tool in tools.items():
                # each in a fresh copy of the folder (the files beside it, too), at the
                # same path: a notebook that prints its folder prints the same
                folder = work / "run" / notebook.stem
                shutil.copytree(args.folder, folder)
                command = [*tool, notebook.name, "out.ipynb", *ARGUMENTS.get(notebook.name, [])]
                code, stderr = run(command, folder, env)
                output = folder / "out.ipynb"
                cells = seen(nbformat.read(output, as_version=4)) if output.exists() else None
                found[name] = (code == 0, output.exists(), cells, stderr.strip().splitlines()[-1:])
                shutil.move(folder, work / name / notebook.stem)
            agree = found["papermill"][:3] == found["nbjobs"][:3]
            same += agree
            status = "same" if agree else "DIFFERENT"
            print(
                f"{notebook.name:<32} {status:<9} papermill exit0={found['papermill'][0]} "
                f"out={found['papermill'][1]}  nbjobs exit0={found['nbjobs'][0]} "
                f"out={found['nbjobs'][1]}"
            )
            if not agree:
                for name in tools:
                    print(f"    {name}: {found[name][3]}")
    finally:
        subprocess.run([str(BIN / "nbjobs"), "server", "stop"], env=env, capture_output=True)
    print(f"{same} of {len(notebooks)} behave as under papermill")


if __name__ == "__main__":
    main()
