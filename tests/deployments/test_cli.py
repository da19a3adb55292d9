"""``nbjobs`` as a user runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from notebook_jobs.deployments.exit_codes import EXIT_BAD_INPUT, EXIT_NOTEBOOK_FAILED, EXIT_OK
from tests.conftest import DATA, EXAMPLES

NBJOBS = str(Path(sys.executable).parent / "nbjobs")


def nbjobs(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NBJOBS, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


@pytest.fixture
def server_env(prefect_server: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": prefect_server}


def test_run_prints_a_summary_and_exits_zero(server_env: dict[str, str], tmp_path: Path) -> None:
    done = nbjobs(
        "run",
        str(EXAMPLES / "report.ipynb"),
        "-p",
        "n",
        "3",
        "-p",
        "label",
        "hello",
        "--store",
        str(tmp_path),
        env=server_env,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert "report.ipynb: completed" in done.stdout
    assert "output total = 14" in done.stdout and 'output label = "hello"' in done.stdout
    assert f"artefacts: {tmp_path}/run-notebook/" in done.stdout


def test_json_prints_exactly_result_json(server_env: dict[str, str], tmp_path: Path) -> None:
    done = nbjobs(
        "run",
        str(DATA / "params.ipynb"),
        "-r",
        "name",
        "5",
        "-y",
        "x: 2",
        "--json",
        "--store",
        str(tmp_path),
        env=server_env,
    )
    assert done.returncode == EXIT_OK, done.stderr
    document = json.loads(done.stdout)
    assert document == json.loads(Path(document["artefacts"]["result"]).read_text())
    assert document["outputs"]["echo"]["name"] == "5" and document["outputs"]["echo"]["x"] == 2


def test_a_failing_notebook_exits_one_with_its_error(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    done = nbjobs("run", str(DATA / "raises.ipynb"), "--store", str(tmp_path), env=server_env)
    assert done.returncode == EXIT_NOTEBOOK_FAILED
    assert "raises.ipynb: failed" in done.stdout
    assert "error in cell 3: ValueError: bad value 42" in done.stdout
    assert "Traceback" not in done.stderr  # Prefect's console logs are quiet unless -v


def test_bad_input_exits_two_and_says_what_to_fix(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    done = nbjobs(
        "run",
        str(DATA / "params.ipynb"),
        "-p",
        "typo",
        "1",
        "--strict-parameters",
        "--store",
        str(tmp_path),
        env=server_env,
    )
    assert done.returncode == EXIT_BAD_INPUT
    assert "unknown parameter(s) 'typo'; declared parameters: x, name" in done.stderr
    done = nbjobs("run", str(DATA / "params.ipynb"), "--kernel", "nope", "--json", env=server_env)
    assert done.returncode == EXIT_BAD_INPUT
    assert json.loads(done.stdout)["error"]["name"] == "UnknownKernelError"


def test_inspect_lists_parameters() -> None:
    done = nbjobs("inspect", str(DATA / "params.ipynb"))
    assert done.returncode == EXIT_OK
    assert done.stdout.splitlines()[0].split() == ["x", "int", "=", "1", "#", "a", "number"]
    as_json = json.loads(nbjobs("inspect", str(DATA / "params.ipynb"), "--json").stdout)
    assert as_json[1] == {
        "name": "name",
        "type": "str",
        "default": '"world"',
        "help": "who to greet",
    }


def test_a_secret_from_the_command_line_is_masked_and_a_plain_value_refused(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    import uuid

    from prefect.blocks.system import Secret

    value, block = f"cli-secret-{uuid.uuid4().hex}", f"cli-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(block)
    notebook = str(DATA / "secret.ipynb")
    store, work = tmp_path / "store", tmp_path / "work"  # it writes credentials.txt in work
    work.mkdir()
    done = nbjobs(
        "run",
        notebook,
        "-s",
        "password",
        block,
        "--store",
        str(store),
        "--cwd",
        str(work),
        "-v",
        env=server_env,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert f"output length = {len(value)}" in done.stdout
    assert 'output password = "********"' in done.stdout
    assert value not in done.stdout + done.stderr
    assert "cell 2 stdout" in done.stderr  # the log was shown, masked
    stored = [p.read_bytes() for p in store.rglob("*") if p.is_file()]
    assert (work / "credentials.txt").read_text() == f"analyst:{value}\n"  # the user's own
    assert stored and not [data for data in stored if value.encode() in data]
    refused = nbjobs(
        "run", notebook, "-p", "password", value, "--store", str(tmp_path), env=server_env
    )
    assert refused.returncode == EXIT_BAD_INPUT
    (line,) = refused.stderr.strip().splitlines()
    assert line.endswith(
        "parameter 'password' is declared secret in the notebook: send the name of a "
        "Secret block holding it, not the value (nbjobs run -s password BLOCK; over HTTP "
        '"password": {"$secret": "BLOCK"})'
    )
    assert value not in refused.stdout + refused.stderr
    prepared = nbjobs(  # --prepare-only writes the injected cell: refused the same way
        "run", notebook, str(tmp_path / "out.ipynb"), "--prepare-only", "-p", "password", value
    )
    assert prepared.returncode == EXIT_BAD_INPUT and not (tmp_path / "out.ipynb").exists()
    assert "declared secret" in prepared.stderr and value not in prepared.stderr


@pytest.mark.parametrize(
    ("error_name", "code"),
    [
        ("UnknownKernelError", 2),  # a request refused: what to fix
        ("SettingsError", 2),
        ("NotebookExecutionError", 1),  # the notebook ran and failed
        ("NotebookTimeoutError", 1),
        ("KernelDiedError", 1),
        ("RunCancelledError", 1),
        ("ArtefactStoreError", 3),
        ("KernelStartError", 4),  # no cell ran: ours, not the notebook's
        ("LocalServerError", 4),
        ("SlurmSubmissionError", 4),
        ("RuntimeError", 4),  # nothing we expected
        ("NotebookJobError", 4),
    ],
)
def test_each_error_has_the_exit_code_of_whose_it_is(error_name: str, code: int) -> None:
    from notebook_jobs.deployments.report import exit_code_for

    assert exit_code_for(error_name) == code
