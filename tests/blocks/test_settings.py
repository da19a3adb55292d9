"""Every NBJOBS_* setting: read in one place, refused the same way everywhere."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from notebook_jobs.blocks.exceptions import SettingsError
from notebook_jobs.blocks.settings import described, settings
from tests.deployments.conftest import NBJOBS, clean_env

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_values_are_read_typed() -> None:
    read = settings(
        {
            "NBJOBS_HOME": "~/jobs",
            "NBJOBS_KERNEL_POOL": "0",
            "NBJOBS_KERNEL_LAUNCHER": "Spawn",
            "NBJOBS_KERNEL_PRELOAD": "numpy, pandas,",
            "NBJOBS_KEEP_RUN_DIRS": "yes",
            "NBJOBS_ZOMBIE_SECONDS": "45",
            "NBJOBS_STORE": "",
        }
    )
    assert read.home == Path("~/jobs").expanduser()
    assert (read.kernel_pool, read.kernel_launcher, read.kernel_preload) == (
        0,
        "spawn",
        ("numpy", "pandas"),
    )
    assert (read.keep_run_dirs, read.zombie_seconds, read.store) == (True, 45.0, None)


@pytest.mark.parametrize(
    ("variable", "value", "takes"),
    [
        ("NBJOBS_KERNEL_POOL", "two", "a whole number >= 0"),
        ("NBJOBS_KERNEL_RETRIES", "-1", "a whole number >= 0"),
        ("NBJOBS_KERNEL_LAUNCHER", "thread", "fork or spawn"),
        ("NBJOBS_KEEP_RUN_DIRS", "maybe", "1 or 0"),
        ("NBJOBS_SERVER_START_TIMEOUT", "0", "a number of seconds > 0"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable: str, value: str, takes: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings({variable: value})
    assert str(caught.value) == f"{variable}={value!r} is not valid: it takes {takes}"
    assert (caught.value.variable, caught.value.value) == (variable, value)


def test_no_module_reads_an_nbjobs_variable_but_the_settings() -> None:
    """Nine variables used to be parsed in seven modules, each in its own way."""
    readers = []
    for folder in ("blocks", "tasks", "flows", "deployments"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(r"environ(\.get)?[\[(]\s*\"NBJOBS_", text) and path.name != "settings.py":
                readers.append(str(path.relative_to(ROOT)))
    assert readers == []


def test_every_setting_is_described_for_the_docs() -> None:
    """The settings page is generated from ``described()``: each row must say something."""
    rows = described()
    assert len(rows) == len({variable for variable, *_ in rows}) >= 13
    for variable, takes, default, doc in rows:
        assert variable.startswith("NBJOBS_") and takes and default and doc.strip(), variable


def test_the_command_line_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    env = {**clean_env(tmp_path), "NBJOBS_KERNEL_RETRIES": "once"}
    done = subprocess.run(
        [NBJOBS, "run", "examples/report.ipynb"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "nbjobs: NBJOBS_KERNEL_RETRIES='once' is not valid: it takes a whole number >= 0\n"
    )
