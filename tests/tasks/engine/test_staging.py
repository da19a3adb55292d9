from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest

from notebook_jobs.blocks.exceptions import (
    CellSelectionError,
    NotebookFormatError,
    NotebookNotFoundError,
    ParameterValueError,
    RequestTooLargeError,
    UnknownParameterError,
)
from notebook_jobs.tasks.engine.fetch import NotebookSource, fetch_notebook_source, parse_notebook
from notebook_jobs.tasks.engine.staging import (
    check_parameters,
    declared_parameters,
    inject_parameters,
    kernel_name_of,
    select_cells,
)
from tests.conftest import DATA, invalid_notebooks


def load(name: str) -> nbformat.NotebookNode:
    return parse_notebook(fetch_notebook_source(str(DATA / name)))


@pytest.mark.unit
def test_truncated_json_is_refused_with_its_position() -> None:
    data = (DATA / "params.ipynb").read_bytes()[:200]
    with pytest.raises(NotebookFormatError, match=r"not valid JSON: .* line \d+ column \d+"):
        parse_notebook(NotebookSource("cut.ipynb", data))


@pytest.mark.unit
def test_json_that_is_not_a_notebook_is_refused() -> None:
    with pytest.raises(NotebookFormatError, match="not a Jupyter notebook"):
        parse_notebook(NotebookSource("x.ipynb", b'{"hello": 1}'))


@pytest.mark.unit
def test_binary_is_refused() -> None:
    with pytest.raises(NotebookFormatError, match="not UTF-8"):
        parse_notebook(NotebookSource("x.ipynb", b"\xff\xfe\x00"))


@pytest.mark.unit
def test_invalid_notebook_structure_is_refused() -> None:
    broken = {"cells": [{"cell_type": "code"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    with pytest.raises(NotebookFormatError, match="not a valid notebook"):
        parse_notebook(NotebookSource("x.ipynb", json.dumps(broken).encode()))


@pytest.mark.unit
def test_nbformat_v3_is_upgraded() -> None:
    v3 = nbformat.v3.new_notebook(
        worksheets=[nbformat.v3.new_worksheet(cells=[nbformat.v3.new_code_cell(input="1 + 1")])]
    )
    nb = parse_notebook(NotebookSource("old.ipynb", nbformat.writes(v3, version=3).encode()))
    assert nb.nbformat == 4 and nb.cells[0].source == "1 + 1"


@pytest.mark.unit
def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(NotebookNotFoundError, match="notebook not found: .*nope.ipynb"):
        fetch_notebook_source(str(tmp_path / "nope.ipynb"))


def test_notebook_from_http(http_notebooks: str) -> None:
    source = fetch_notebook_source(f"{http_notebooks}/params.ipynb")
    assert source.name == "params.ipynb" and parse_notebook(source).cells


def test_missing_http_notebook(http_notebooks: str) -> None:
    with pytest.raises(NotebookNotFoundError, match="404"):
        fetch_notebook_source(f"{http_notebooks}/missing.ipynb")


def test_notebook_from_s3(bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="nb/params.ipynb", Body=(DATA / "params.ipynb").read_bytes())
    assert fetch_notebook_source(f"s3://{bucket}/nb/params.ipynb").name == "params.ipynb"
    with pytest.raises(NotebookNotFoundError, match="could not read notebook"):
        fetch_notebook_source(f"s3://{bucket}/nb/absent.ipynb")


def test_a_notebook_over_the_limit_is_refused_from_every_place(
    tmp_path: Path,
    http_notebooks: str,
    bucket: str,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = (DATA / "params.ipynb").read_bytes()
    monkeypatch.setenv("NBJOBS_MAX_NOTEBOOK_BYTES", str(len(data) - 10))
    s3.put_object(Bucket=bucket, Key="nb/params.ipynb", Body=data)
    for where in (
        str(DATA / "params.ipynb"),
        f"{http_notebooks}/params.ipynb",
        f"s3://{bucket}/nb/params.ipynb",
        data.decode(),
    ):
        with pytest.raises(RequestTooLargeError, match="over the limit of") as refused:
            fetch_notebook_source(where)
        assert refused.value.limit == len(data) - 10
    monkeypatch.setenv("NBJOBS_MAX_NOTEBOOK_BYTES", str(len(data)))
    assert fetch_notebook_source(f"{http_notebooks}/params.ipynb").data == data


def deeply(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("parameters", "refused"),
    [
        ({f"p{i}": i for i in range(1001)}, "1,001 names, over the limit of 1,000 names"),
        ({"x": "y" * 10_000_000}, "parameters as JSON is 10,000,009 bytes"),
        ({"x": deeply(33)}, "nested deeper than 32 levels"),
    ],
)
@pytest.mark.unit
def test_requests_over_the_limits_are_refused(parameters: dict[str, Any], refused: str) -> None:
    with pytest.raises((RequestTooLargeError, ParameterValueError), match=refused):
        check_parameters(load("params.ipynb"), parameters, "python3")
    check_parameters(load("params.ipynb"), {"x": deeply(32)}, "python3")  # the deepest allowed


@pytest.mark.unit
def test_notebook_json_itself_is_accepted() -> None:
    document = json.loads((DATA / "params.ipynb").read_text())
    assert parse_notebook(fetch_notebook_source(document)).cells
    assert parse_notebook(fetch_notebook_source(json.dumps(document))).cells


@pytest.mark.unit
def test_declared_parameters_with_types_defaults_and_help() -> None:
    found = {p["name"]: p for p in declared_parameters(load("params.ipynb"))}
    assert found["x"] == {"name": "x", "type": "int", "default": "1", "help": "a number"}
    assert found["config"]["type"] == "dict" and found["nothing"]["type"] == "None"


@pytest.mark.unit
def test_an_unknown_parameter_is_injected_with_a_warning_naming_the_declared_ones() -> None:
    warnings = check_parameters(load("params.ipynb"), {"x": 2, "y": 3}, "python3")
    assert warnings == [
        "unknown parameter(s) 'y' injected anyway, as papermill does; the notebook declares: "
        "x, name, ratio, flag, items, config, nothing (--strict-parameters refuses instead)"
    ]
    assert check_parameters(load("params.ipynb"), {"x": 2}, "python3") == []


@pytest.mark.unit
def test_strict_parameters_refuse_an_unknown_name() -> None:
    with pytest.raises(UnknownParameterError) as caught:
        check_parameters(load("params.ipynb"), {"x": 2, "y": 3}, "python3", strict=True)
    assert caught.value.unknown == ["y"]
    assert "declared parameters: x, name, ratio, flag, items, config, nothing" in str(caught.value)


@pytest.mark.unit
def test_parameters_for_a_notebook_without_a_parameters_cell_go_in_at_the_top() -> None:
    nb = load("no_params.ipynb")
    [warning] = check_parameters(nb, {"x": 1}, "python3")
    assert "no cell tagged 'parameters'" in warning
    injected, origin = inject_parameters(nb, {"x": 1}, "python3")
    assert injected.cells[0].metadata.tags == ["injected-parameters"] and origin[0] is None
    assert "x = 1" in injected.cells[0].source
    with pytest.raises(UnknownParameterError, match="declares no parameters"):
        check_parameters(nb, {"x": 1}, "python3", strict=True)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("x = 1; import os  #", "not a valid parameter name"),
        ("1x", "not a valid parameter name"),
        ("class", "is a Python keyword"),
        ("__builtins__", "starts with __"),
    ],
)
@pytest.mark.unit
def test_a_name_that_is_not_an_identifier_is_refused_in_every_mode(name: str, problem: str) -> None:
    for strict in (False, True):
        with pytest.raises(ParameterValueError, match=problem):
            check_parameters(load("params.ipynb"), {name: 1}, "python3", strict=strict)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (datetime(2026, 1, 1), "type datetime cannot be carried as JSON"),
        (math.nan, "not a JSON number"),
        ({1: "a"}, "JSON keys are strings"),
        ({"a": {1, 2}}, "type set cannot be carried as JSON"),
    ],
)
@pytest.mark.unit
def test_values_that_are_not_json_are_refused(value: Any, message: str) -> None:
    with pytest.raises(ParameterValueError, match=message):
        check_parameters(load("params.ipynb"), {"x": value}, "python3")


@pytest.mark.unit
def test_cell_selection_by_index_range_and_tag() -> None:
    nb = load("params.ipynb")
    assert select_cells(nb, None) is None
    assert select_cells(nb, "2") == {0, 2}  # the parameters cell always runs
    assert select_cells(nb, [1, "3-4"]) == {0, 1, 3, 4}
    assert select_cells(nb, "extra") == {0, 3}


@pytest.mark.parametrize(
    ("cells", "message"), [("9", "out of range"), ("3-1", "range"), ("nope", "no cell is tagged")]
)
@pytest.mark.unit
def test_bad_cell_selection(cells: str, message: str) -> None:
    with pytest.raises(CellSelectionError, match=message):
        select_cells(load("params.ipynb"), cells)


@pytest.mark.unit
def test_injection_follows_the_parameters_cell_and_maps_origins() -> None:
    nb, origin = inject_parameters(load("params.ipynb"), {"x": 5}, "python3")
    assert nb.cells[1].metadata["tags"] == ["injected-parameters"]
    assert "x = 5" in nb.cells[1].source
    assert origin == [0, None, 1, 2, 3, 4]


@pytest.mark.unit
@pytest.mark.parametrize("minor", [0, 4])
def test_an_older_nbformat_4_notebook_stays_valid_with_parameters(minor: int) -> None:
    """Injecting a cell (it has an id) into 4.0-4.4, which allow none: upgraded, as papermill does."""
    document = json.loads((DATA / "params.ipynb").read_text())
    document["nbformat_minor"] = minor
    for cell in document["cells"]:
        cell.pop("id", None)
    nb = parse_notebook(NotebookSource("old.ipynb", json.dumps(document).encode()))
    injected, _ = inject_parameters(nb, {"x": 3}, "python3")
    nbformat.validate(injected)
    assert injected.nbformat_minor == 5


@pytest.mark.unit
@pytest.mark.parametrize("name", ["python", "python3", "Python3", "PYTHON3"])
def test_kernel_names_resolve_as_jupyter_client_resolves_them(name: str) -> None:
    from jupyter_client.kernelspec import find_kernel_specs
    from jupyter_client.manager import KernelManager

    nb = load("params.ipynb")
    ours = kernel_name_of(nb, name)
    assert ours in find_kernel_specs()
    theirs = KernelManager(kernel_name=name).kernel_spec
    assert theirs is not None
    assert KernelManager(kernel_name=ours).kernel_spec.resource_dir == theirs.resource_dir  # type: ignore[union-attr]
    nb.metadata["kernelspec"]["name"] = name
    assert kernel_name_of(nb, None) == ours


@pytest.mark.unit
def test_the_suites_check_of_stored_notebooks_refuses_an_invalid_one() -> None:
    """What tests/conftest.py runs over every stored notebook: it would catch the 4.4
    notebook with an injected cell id that papermill-style injection used to write."""
    old = json.loads((DATA / "params.ipynb").read_text())
    old["nbformat_minor"] = 4
    old["cells"][0]["id"] = "injected"  # not allowed before 4.5
    [problem] = invalid_notebooks({"old.ipynb": json.dumps(old).encode()})
    assert "old.ipynb" in problem and "('id' was unexpected)" in problem
    del old["cells"][0]["id"]
    source = NotebookSource("old.ipynb", json.dumps(old).encode())
    fixed, _ = inject_parameters(parse_notebook(source), {"x": 2}, "python3")
    assert invalid_notebooks({"fixed.ipynb": nbformat.writes(fixed).encode()}) == []
