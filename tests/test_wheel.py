"""The built wheel installs beside a Prefect project's own ``flows`` and ``tasks``.

A project with packages named ``flows`` and ``tasks`` (as Prefect and Celery projects
have), a new venv with the locked dependencies and the wheel, and one process that
imports and runs both: the project's flow and ``run-notebook``, reporting to the
session's Prefect server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def uv() -> list[str]:
    """uv as ``.ci/setup`` found it: on PATH, or the module of the system's python3."""
    found = shutil.which("uv")
    return [found] if found else ["python3", "-m", "uv"]


def sh(*command: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    sh(*uv(), "build", "--wheel", "--out-dir", out)
    [built] = out.glob("notebook_jobs-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.endswith(".dist-info/RECORD")}
    data = "notebook_jobs-0.1.0.data"
    assert {top for top in tops if not top.endswith(".dist-info")} == {"notebook_jobs", data}
    # beside the package, only the Jupyter config that turns on our jupyter-scheduler
    # backend (deployments/lab), installed as $PREFIX/etc/jupyter/...
    assert [name for name in names if name.startswith(data)] == [
        f"{data}/data/etc/jupyter/jupyter_jupyter_scheduler_config.json"
    ]
    assert "notebook_jobs/tasks/engine/slurm/job.py" in names
    assert not [name for name in names if "__pycache__" in name]


def test_installed_beside_a_project_with_its_own_flows_and_tasks(
    wheel: Path, tmp_path: Path, prefect_server: str
) -> None:
    project = tmp_path / "project"
    for package, source in (
        ("flows", "from prefect import flow\n\nfrom tasks.greet import greet\n\n\n"
         "@flow\ndef hello(name: str) -> str:\n    return greet(name)\n"),
        ("tasks", "def greet(name: str) -> str:\n    return f'hello {name}'\n"),
    ):  # fmt: skip
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text("")
        module = "hello" if package == "flows" else "greet"
        (project / package / f"{module}.py").write_text(source)
    locked = tmp_path / "requirements.txt"
    sh(*uv(), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "-o", locked)
    venv = tmp_path / "venv"
    sh(*uv(), "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    sh(*uv(), "pip", "install", "--quiet", "--python", python, "-r", locked, wheel)

    script = (
        "import json, sys\n"
        "import flows.hello, tasks.greet\n"  # the project's own, from its folder
        "from notebook_jobs.deployments.python_api import run_notebook_sync\n"
        "import notebook_jobs.tasks.engine.staging as engine\n"
        "said = flows.hello.hello('there')\n"
        f"result = run_notebook_sync({str(ROOT / 'examples' / 'report.ipynb')!r},\n"
        f"    parameters={{'n': 3}}, store={str(tmp_path / 'store')!r})\n"
        "print(json.dumps({'said': said, 'total': result.outputs['total'],\n"
        "    'project_tasks': tasks.greet.__file__, 'ours': engine.__file__}))\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VIRTUAL_ENV"))},
        "PREFECT_API_URL": prefect_server,
        "NBJOBS_HOME": str(tmp_path / "home"),
    }
    seen = json.loads(sh(python, "-c", script, cwd=project, env=env).strip().splitlines()[-1])
    assert seen["said"] == "hello there" and seen["total"] == 14
    assert seen["project_tasks"] == str(project / "tasks" / "greet.py")
    assert seen["ours"].startswith(str(venv)) and "/site-packages/notebook_jobs/" in seen["ours"]
