"""The deployer's rules, as the flow applies them at run time (pure)."""

from __future__ import annotations

import pytest

from notebook_jobs.flows.deployment_rules import refused_parameter
from notebook_jobs.flows.run_notebook import FLOW_DEFAULTS

pytestmark = pytest.mark.unit

NOTEBOOK = "s3://runs/notebooks/0123/report.ipynb"


def test_a_notebook_deployment_holds_every_technical_parameter_to_its_own_value() -> None:
    fixed = {"notebook": NOTEBOOK, "store": "s3://runs", "parameters": {"n": 1}}
    same = {"notebook": NOTEBOOK, "store": "s3://runs", "kernel": None, "input_files": None}
    assert refused_parameter(fixed, [], same, FLOW_DEFAULTS) is None
    for name, value in (
        ("store", "/root/.ssh"),
        ("notebook", "/etc/passwd"),
        ("input_files", ["/etc/hostname"]),
        ("kernel", "python3"),
        ("cluster", "hpc"),
        ("timeout_seconds", 5),
    ):
        assert refused_parameter(fixed, [], {**same, name: value}, FLOW_DEFAULTS) == name
    opened = ["nbjobs-allow:timeout_seconds"]
    assert refused_parameter(fixed, opened, {**same, "timeout_seconds": 5}, FLOW_DEFAULTS) is None


def test_a_general_deployment_takes_anything() -> None:
    given = {"notebook": "/anywhere.ipynb", "store": "/tmp/x", "kernel": "ir"}
    assert refused_parameter({}, [], given, FLOW_DEFAULTS) is None
