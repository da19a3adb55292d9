"""The hostile corpus: each notebook ends in its documented state, says what happened,
and keeps its partial notebook wherever a kernel ran (tests/data/hostile/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import DATA, run_flow, state_outcome

pytestmark = pytest.mark.usefixtures("prefect_server")
HOSTILE = DATA / "hostile"

# (case, request, final state, result status or None when refused, message fragment)
CASES: list[tuple[str, dict[str, Any], str, str | None, str]] = [
    (
        "raises in cell 3",
        {"notebook": DATA / "raises.ipynb"},
        "FAILED",
        "failed",
        "cell 3: ValueError: bad value 42",
    ),
    (
        "sys.exit(0) is a clean stop",
        {"notebook": DATA / "exits.ipynb", "parameters": {"code": 0}},
        "COMPLETED",
        "completed",
        "",
    ),
    (
        "sys.exit(1) fails",
        {"notebook": DATA / "exits.ipynb", "parameters": {"code": 1}},
        "FAILED",
        "failed",
        "cell 2: SystemExit: 1",
    ),
    (
        "loops forever: whole-run timeout",
        {"notebook": HOSTILE / "loops_forever.ipynb", "timeout_seconds": 3},
        "FAILED",
        "timed_out",
        "NotebookTimeoutError: the run exceeded its timeout of 3 s while running cell 1",
    ),
    (
        "blocks past the per-cell timeout",
        {
            "notebook": DATA / "sleeps.ipynb",
            "parameters": {"seconds": 60},
            "cell_timeout_seconds": 2,
        },
        "FAILED",
        "timed_out",
        "cell 2 exceeded the per-cell timeout of 2 s",
    ),
    (
        "os._exit kills the kernel",
        {"notebook": HOSTILE / "os_exit.ipynb"},
        "FAILED",
        "kernel_died",
        "KernelDiedError: the kernel died while running cell 1 (exit code 1)",
    ),
    (
        "a segfault kills the kernel",
        {"notebook": HOSTILE / "segfault.ipynb"},
        "FAILED",
        "kernel_died",
        "the kernel died while running cell 1 (killed by SIGSEGV)",
    ),
    ("200 MB of output", {"notebook": HOSTILE / "huge_output.ipynb"}, "COMPLETED", "completed", ""),
    (
        "non-UTF-8 bytes on stdout",
        {"notebook": HOSTILE / "non_utf8.ipynb"},
        "COMPLETED",
        "completed",
        "",
    ),
    ("no cells", {"notebook": HOSTILE / "no_cells.ipynb"}, "COMPLETED", "completed", ""),
    ("nbformat v3", {"notebook": HOSTILE / "nbformat_v3.ipynb"}, "COMPLETED", "completed", ""),
    (
        "parameters without a parameters cell, injected at the top as papermill does",
        {"notebook": DATA / "no_params.ipynb", "parameters": {"x": 1}},
        "COMPLETED",
        "completed",
        "",
    ),
    (
        "parameters without a parameters cell, strictly",
        {"notebook": DATA / "no_params.ipynb", "parameters": {"x": 1}, "strict_parameters": True},
        "FAILED",
        None,
        "UnknownParameterError: unknown parameter(s) 'x'; the notebook declares no parameters",
    ),
    (
        "a kernel that is not installed",
        {"notebook": DATA / "params.ipynb", "kernel": "julia-1.10"},
        "FAILED",
        None,
        # the list goes on with what this machine has (bash and ir in CI)
        "UnknownKernelError: kernel 'julia-1.10' is not installed; installed kernels: ",
    ),
    (
        "truncated notebook JSON",
        {"notebook": HOSTILE / "truncated.ipynb"},
        "FAILED",
        None,
        "NotebookFormatError: truncated.ipynb is not valid JSON",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_", "final", "status", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_hostile_notebook(
    tmp_path: Path,
    case: str,
    request_: dict[str, Any],
    final: str,
    status: str | None,
    message: str,
) -> None:
    request_ = {**request_, "notebook": str(request_["notebook"])}
    state = run_flow(**request_, store=str(tmp_path))
    assert state.type.value == final, state.message
    assert message in (state.message or ""), state.message
    outcome = state_outcome(state)
    result = outcome if not isinstance(outcome, BaseException) else getattr(outcome, "result", None)
    if status is None:  # refused before any kernel started: nothing to store
        assert result is None and not list(tmp_path.rglob("*.ipynb"))
        return
    document = result if isinstance(result, dict) else result.model_dump(mode="json")
    assert document["status"] == status
    prefix = Path(document["artefacts"]["prefix"])
    stored = json.loads((prefix / "result.json").read_text())
    assert stored["status"] == status
    notebook = nbformat.read(
        prefix / "notebook.ipynb", as_version=4
    )  # the partial notebook, always
    CHECKS.get(case, lambda nb, doc: None)(notebook, document)


def _outputs(nb: nbformat.NotebookNode, index: int) -> str:
    return "".join(o.get("text", "") for o in nb.cells[index].get("outputs", []))


CHECKS: dict[str, Any] = {
    # papermill's banner is the first cell: input cell 2 comes after it and the injected one
    "raises in cell 3": lambda nb, doc: (
        (
            _outputs(nb, 3) == "cell 2 ran\n"
            and "papermill-error-cell-tag" in nb.cells[0].metadata.tags
        )
        or pytest.fail("partial output or banner lost")
    ),
    "blocks past the per-cell timeout": lambda nb, doc: (
        (
            [o.get("ename") for o in nb.cells[3].outputs] == ["KeyboardInterrupt"]
            and "time.sleep(seconds)" in doc["error"]["traceback"]
        )
        or pytest.fail(str(nb.cells[3].outputs))
    ),
    "parameters without a parameters cell, injected at the top as papermill does": lambda nb, doc: (
        (nb.cells[0].source == "# Parameters\nx = 1\n" and "no cell tagged" in doc["notes"][0])
        or pytest.fail(str(doc["notes"]))
    ),
    "sys.exit(0) is a clean stop": lambda nb, doc: (
        (
            [c["status"] for c in doc["cells"]] == ["ok", "ok", "ok", "not_run"]
            and "sys.exit(0)" in doc["notes"][0]
        )
        or pytest.fail(str(doc["cells"]))
    ),
    "loops forever: whole-run timeout": lambda nb, doc: (
        (_outputs(nb, 0) == "warming up\n") or pytest.fail("partial output lost")
    ),
    "os._exit kills the kernel": lambda nb, doc: (
        (_outputs(nb, 0) == "about to die\n") or pytest.fail("partial output lost")
    ),
    "200 MB of output": lambda nb, doc: (
        (
            len(_outputs(nb, 0)) <= 5 * 1024 * 1024 + 200
            and "output truncated" in _outputs(nb, 0)
            and _outputs(nb, 1) == "after the flood\n"
            and doc["notes"] == ["output truncated in cell(s) 0"]
        )
        or pytest.fail(doc["notes"])
    ),
    "non-UTF-8 bytes on stdout": lambda nb, doc: (
        ("bytes: \ufffd" in _outputs(nb, 0)) or pytest.fail(repr(_outputs(nb, 0)))
    ),
    "no cells": lambda nb, doc: (doc["cells"] == []) or pytest.fail(str(doc["cells"])),
    "nbformat v3": lambda nb, doc: (
        (_outputs(nb, 0) == "from nbformat 3\n") or pytest.fail(repr(_outputs(nb, 0)))
    ),
}


def test_a_dead_kernel_is_retried_and_the_second_attempt_succeeds(tmp_path: Path) -> None:
    marker = tmp_path / "attempts.txt"
    state = run_flow(
        notebook=str(HOSTILE / "dies_once.ipynb"),
        parameters={"marker": str(marker)},
        store=str(tmp_path / "store"),
    )
    assert state.is_completed(), state.message
    assert marker.read_text().count("attempt") == 2
    result = state_outcome(state)
    partial = nbformat.read(Path(result.artefacts.notebook), as_version=4)
    assert _outputs(partial, 3) == "2 attempts\n"  # index 1 is the injected parameters cell


def test_a_notebook_exception_is_not_retried(tmp_path: Path) -> None:
    marker = tmp_path / "runs.txt"
    state = run_flow(
        notebook=str(HOSTILE / "raises_and_counts.ipynb"),
        parameters={"marker": str(marker)},
        store=str(tmp_path / "store"),
    )
    assert state.is_failed() and "RuntimeError: always" in state.message
    assert marker.read_text().count("run") == 1


def test_a_parameter_holding_code_arrives_as_that_string(tmp_path: Path) -> None:
    sneaky = '"; import os; os.system("touch PWNED") #\n\'\'\'\\ """ {code}'
    state = run_flow(
        notebook=str(HOSTILE / "echo_string.ipynb"),
        parameters={"code": sneaky},
        store=str(tmp_path),
    )
    result = state_outcome(state)
    assert result.outputs["code"] == sneaky
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()


def test_parameters_of_every_json_type_arrive_exactly(tmp_path: Path) -> None:
    parameters = {
        "x": -(2**62),
        "name": "ünï\u00a0cødé ✓ " + "long " * 2000,
        "ratio": 1.0000000000000002,
        "flag": False,
        "items": [None, [[]], {"k": [1.5, "two"]}],
        "config": {"a": {"b": {"c": None}}},
        "nothing": None,
    }
    state = run_flow(
        notebook=str(DATA / "params.ipynb"), parameters=parameters, store=str(tmp_path)
    )
    assert state_outcome(state).outputs["echo"] == parameters


def test_artefact_keys_stay_under_the_run_prefix_whatever_the_file_names(tmp_path: Path) -> None:
    store = tmp_path / "store"
    state = run_flow(notebook=str(HOSTILE / "odd_file_names.ipynb"), store=str(store))
    result = state_outcome(state)
    prefix = Path(result.artefacts.prefix)
    for uri in result.artefacts.files.values():
        path = Path(uri).resolve()
        assert prefix in path.parents, uri
    written = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    assert all(w.startswith(f"run-notebook/{result.flow_run_id}/") for w in written), written
    assert len(result.artefacts.files) == 4
