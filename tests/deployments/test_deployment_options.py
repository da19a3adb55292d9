"""``DeploymentOptions``: one value for what ``nbjobs deploy`` threads through to the spec."""

from __future__ import annotations

import pytest

from notebook_jobs.blocks.exceptions import NotebookInputError, OptionError
from notebook_jobs.deployments.definitions import DeploymentOptions, notebook_spec

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"on_overlap": "skip", "concurrency_limit": 2}, "leave out --concurrency-limit"),
        ({"cron": "0 6 * * *", "interval_seconds": 60.0}, "a cron or an interval, not both"),
    ],
)
def test_choices_that_cannot_work_together_are_refused(
    options: dict[str, object], refused: str
) -> None:
    with pytest.raises(OptionError, match=refused):
        DeploymentOptions(**options)  # type: ignore[arg-type]


def test_an_unknown_name_to_open_is_refused() -> None:
    with pytest.raises(NotebookInputError, match="timeout_secs"):
        DeploymentOptions(allow=("timeout_secs",))


def test_the_spec_carries_the_options() -> None:
    options = DeploymentOptions(
        defaults={"n": 3},
        store="s3://bucket/runs",
        fixed={"kernel": "python3", "cluster": None},
        allow=("timeout_seconds",),
        cron="0 6 * * 1-5",
        timezone="Europe/Berlin",
        on_overlap="skip",
        catch_up="latest",
    )
    spec = notebook_spec(
        name="daily",
        notebook_uri="s3://bucket/notebooks/abc/daily.ipynb",
        notebook_name="daily.ipynb",
        digest="abc",
        declared=[{"name": "n", "type": "int", "default": 1, "help": ""}],
        options=options,
    )
    assert spec.parameters == {
        "notebook": "s3://bucket/notebooks/abc/daily.ipynb",
        "parameters": {"n": 3},
        "kernel": "python3",
        "store": "s3://bucket/runs",
    }
    assert list(spec.schema["properties"]) == ["parameters", "timeout_seconds"]  # type: ignore[index]
    assert (spec.cron, spec.timezone, spec.on_overlap, spec.catch_up) == (
        "0 6 * * 1-5",
        "Europe/Berlin",
        "skip",
        "latest",
    )
    assert {"nbjobs-allow:timeout_seconds", "on-overlap:skip", "catch-up:latest"} <= set(spec.tags)
    unscheduled = notebook_spec(
        name="adhoc-ish",
        notebook_uri="/n.ipynb",
        notebook_name="n.ipynb",
        digest="abc",
        declared=[],
        options=DeploymentOptions(timezone="Europe/Berlin"),
    )
    assert unscheduled.timezone is None and unscheduled.cron is None
