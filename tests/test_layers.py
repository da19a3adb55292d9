"""The house's whiteboard, checked by running code rather than by lint alone.

- Imports go one way: ``blocks <- tasks <- flows <- deployments``.
- The engine (``tasks/engine``) imports no Prefect, not even through ``blocks``: it runs in
  a Slurm job on a compute node and in the fork server, where Prefect's 300 modules are
  seconds of start-up for nothing.
- Each of our modules is loaded under one name, ``notebook_jobs.*``: a module loaded twice
  has two of every class (two ``RunCancelledError``, two kernel pools).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["blocks", "tasks", "flows", "deployments"]


def _modules(folder: str) -> list[Path]:
    """The modules of a folder, less ``__main__.py`` (importing it runs the command)."""
    return sorted(path for path in (ROOT / folder).rglob("*.py") if path.name != "__main__.py")


def _module_name(path: Path) -> str:
    """The one name a module of ours is imported under: ``notebook_jobs.tasks.engine.cells``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("notebook_jobs", *parts)).removesuffix(".__init__")


def _all_modules() -> list[str]:
    return [_module_name(path) for layer in LAYERS for path in _modules(layer)]


def _imported(path: Path) -> set[str]:
    """Every module a file imports, wherever the import statement sits."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.unit
@pytest.mark.parametrize("layer", LAYERS)
def test_imports_go_one_way(layer: str) -> None:
    above = LAYERS[LAYERS.index(layer) + 1 :]
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(layer)
        for name in _imported(path)
        if name.split(".")[:2] in (["notebook_jobs", higher] for higher in above)
    ]
    assert wrong == []


# what a compute node imports: every engine module, and the job's entry point
BLOCK_PREFECT = """
import importlib, importlib.abc, json, sys

class NoPrefect(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prefect", "prefect_aws", "prefect_dask"):
            raise ImportError(f"{name} is not installed on this node")
        return None

sys.meta_path.insert(0, NoPrefect())
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("notebook_jobs"))))
"""


@pytest.mark.unit
def test_the_engine_imports_with_prefect_unimportable() -> None:
    names = [_module_name(path) for path in _modules("tasks/engine")]
    assert "notebook_jobs.tasks.engine.slurm.job" in names and len(names) > 25
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_PREFECT, json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert set(names) <= set(loaded)
    # what else of ours the engine needs: blocks' Prefect-free modules and the models
    beyond = {m for m in loaded if not m.startswith("notebook_jobs.tasks.engine")}
    assert "notebook_jobs.blocks.store" not in beyond and "notebook_jobs.blocks.slurm" not in beyond


def test_a_slurm_job_runs_its_notebook_on_a_node_without_prefect(tmp_path: Path) -> None:
    """``python -m notebook_jobs.tasks.engine.slurm.job JOB_DIR``, as the batch script runs
    it, with Prefect unimportable: a real kernel runs the staged notebook."""
    import nbformat

    from notebook_jobs.tasks.engine.layout import EXECUTED_NAME, REPORT_NAME, STAGED_NAME
    from notebook_jobs.tasks.engine.slurm.job import write_job_spec

    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = 20"), nbformat.v4.new_code_cell("print(x + 22)")]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, tmp_path / STAGED_NAME)
    write_job_spec(
        tmp_path,
        kernel="python3",
        cell_origin=[0, 1],
        selected=None,
        cell_timeout_seconds=60,
        timeout_seconds=120,
    )
    run_job = (
        "\nimport runpy\nsys.argv = ['job', sys.argv[2]]\n"
        "runpy.run_module('notebook_jobs.tasks.engine.slurm.job', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_PREFECT + run_job, json.dumps([]), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    assert report["status"] == "completed", report
    executed = nbformat.read(tmp_path / EXECUTED_NAME, as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"


@pytest.mark.unit
def test_prefect_yaml_names_the_flow_by_its_one_module() -> None:
    """A file entrypoint (``flows/run_notebook.py:run_notebook``) makes Prefect load the
    file as a second module beside ``notebook_jobs.flows.run_notebook``."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    entrypoints = {d["entrypoint"] for d in config["deployments"]}
    assert entrypoints == {"notebook_jobs.flows.run_notebook.run_notebook"}
    from prefect.flows import load_flow_from_entrypoint

    from notebook_jobs.flows.run_notebook import run_notebook

    assert load_flow_from_entrypoint(entrypoints.pop()) is run_notebook


@pytest.mark.unit
def test_no_module_of_ours_is_loaded_under_two_names() -> None:
    """Import everything, as the worker and the CLI do, then look for our files under a
    name other than ``notebook_jobs.*``."""
    script = """
import importlib, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
def layer(module):
    file = pathlib.Path(getattr(module, "__file__", None) or "/").resolve()
    inside = file.is_relative_to(root) and file.relative_to(root).parts[0]
    return file if inside in ("blocks", "tasks", "flows", "deployments") else None
ours = [(name, str(layer(m))) for name, m in list(sys.modules.items()) if layer(m)]
print(json.dumps(ours))
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(ROOT), json.dumps(_all_modules())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ours = json.loads(done.stdout)
    assert len(ours) > 80
    assert [name for name, _ in ours if not name.startswith("notebook_jobs")] == []
    files = [file for _, file in ours]
    assert len(files) == len(set(files)), "a file loaded under two names"


@pytest.mark.unit
def test_the_error_tree_is_closed() -> None:
    """Every exception class of ours is a ``NotebookJobError`` drawn in the tree, and none is
    a ``ValueError`` or ``RuntimeError``, so that an ``except ValueError`` around a parse
    never catches one of ours by accident (a timeout is also a ``TimeoutError``, on purpose)."""
    import importlib
    import inspect

    from notebook_jobs.blocks import exceptions

    defined = []
    for name in _all_modules():
        module = importlib.import_module(name)
        defined += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__
        ]
    assert len(defined) > 30
    assert [c.__name__ for c in defined if not issubclass(c, exceptions.NotebookJobError)] == []
    assert {c.__module__ for c in defined} == {"notebook_jobs.blocks.exceptions"}
    builtin = [
        f"{c.__name__} is a {base.__name__}"
        for c in defined
        for base in (ValueError, RuntimeError, TypeError, KeyError, OSError)
        if issubclass(c, base) and not (base is OSError and issubclass(c, TimeoutError))
    ]
    assert builtin == []
    tree = exceptions.__doc__ or ""
    drawn = set(re.findall(r"(?:──|^\s*)\s*(\w+Error)\b", tree, flags=re.MULTILINE))
    assert {c.__name__ for c in defined} == drawn
