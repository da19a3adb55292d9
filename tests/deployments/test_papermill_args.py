"""Parameters on the command line, with papermill as the oracle: same input, same values."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from notebook_jobs.deployments.papermill_args import read_parameters, resolve_type
from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
from notebook_jobs.tasks.engine.staging import inject_parameters
from tests.conftest import DATA

pytestmark = pytest.mark.unit

PAPERMILL = str(Path(sys.executable).parent / "papermill")
NBJOBS = str(Path(sys.executable).parent / "nbjobs")
TEXTS = [
    "5",
    "007",
    "1_000",
    "-3",
    "2.5",
    "1e3",
    "nan",
    "inf",
    "True",
    "False",
    "None",
    "true",
    "null",
    "hello",
    '"Hello"',
    "[1, 2]",
    '{"a": 1}',
    "",
    " 5 ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_a_p_value_is_what_papermill_makes_of_it(text: str) -> None:
    from papermill.cli import _resolve_type

    ours, theirs = resolve_type(text), _resolve_type(text)
    assert type(ours) is type(theirs)
    assert ours == theirs or (math.isnan(ours) and math.isnan(theirs))


def injected_by_papermill(args: list[str], tmp_path: Path) -> str:
    """The source papermill's CLI injects for these arguments (``--prepare-only``)."""
    out = tmp_path / "out.ipynb"
    subprocess.run(
        [PAPERMILL, str(DATA / "params.ipynb"), str(out), "--prepare-only", *args],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    cells = json.loads(out.read_text())["cells"]
    return next(
        "".join(c["source"]) for c in cells if "injected-parameters" in c["metadata"]["tags"]
    )


def injected_by_us(parameters: dict[str, Any]) -> str:
    nb = parse_notebook(fetch_notebook_source(str(DATA / "params.ipynb")))
    injected, _ = inject_parameters(nb, parameters, "python3")
    return next(
        "".join(c.source) for c in injected.cells if "injected-parameters" in c.metadata.tags
    )


def test_every_option_in_papermills_order(tmp_path: Path) -> None:
    """-b, then -f, then -y, then -p, then -r, whatever the order typed; the last wins."""
    (tmp_path / "params.yaml").write_text("x: 10\nname: from-file\nwhen: 2024-01-02\n")
    encoded = base64.b64encode(b"x: 1\nratio: 0.25\nitems: [1, two]\n").decode()
    args = [
        "-r",
        "name",
        "007",
        "-p",
        "x",
        "2",
        "-y",
        "flag: true\nx: 3\nconfig: {a: [1, 2]}",
        "-f",
        str(tmp_path / "params.yaml"),
        "-b",
        encoded,
        "-p",
        "nothing",
        "None",
    ]
    ours = read_parameters(
        p=[["x", "2"], ["nothing", "None"]],
        r=[["name", "007"]],
        y=["flag: true\nx: 3\nconfig: {a: [1, 2]}"],
        f=[str(tmp_path / "params.yaml")],
        b=[encoded],
    )
    assert injected_by_us(ours) == injected_by_papermill(args, tmp_path)
    assert ours["when"] == "2024-01-02"  # papermill keeps dates as strings


@pytest.mark.parametrize(
    "args",
    [["-y", "x: [unclosed"], ["-f", "/nonexistent/params.yaml"], ["-b", "%%%"], ["-y", "- a list"]],
    ids=["bad-yaml", "missing-file", "bad-base64", "not-a-mapping"],
)
def test_unreadable_parameters_are_one_line_and_exit_two(args: list[str]) -> None:
    done = subprocess.run(
        [NBJOBS, "run", str(DATA / "params.ipynb"), *args], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.startswith("nbjobs: ") and done.stderr.count("\n") == 1


def test_nan_is_refused_with_the_way_around_it() -> None:
    done = subprocess.run(
        [NBJOBS, "run", str(DATA / "params.ipynb"), "-p", "ratio", "nan"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "-r ratio nan passes the string" in done.stderr


def test_a_parameters_file_that_is_not_utf8_is_one_option_error(tmp_path: Path) -> None:
    from notebook_jobs.blocks.exceptions import OptionError

    latin = tmp_path / "params.yaml"
    latin.write_bytes("city: Zürich\n".encode("latin-1"))
    with pytest.raises(OptionError, match="is not UTF-8 text"):
        read_parameters(p=[], r=[], y=[], f=[str(latin)], b=[])
