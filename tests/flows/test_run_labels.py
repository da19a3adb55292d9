"""Run names, notebook names and triggers: readable, unique, one per run (pure)."""

from __future__ import annotations

import json

import pytest

from notebook_jobs.flows.run_labels import (
    MADE_UP_NAME,
    MAX_NAME_CHARS,
    notebook_label,
    readable_name,
    trigger_of,
)
from notebook_jobs.tasks.engine.fetch import display_name

pytestmark = pytest.mark.unit


def test_a_name_says_the_notebook_its_values_and_which_run() -> None:
    name = readable_name("s3://b/nb/report.ipynb", {"n": 20, "label": "monthly"}, "01a2-9c3f2a")
    assert name == "report n=20 label=monthly · 9c3f2a"
    assert readable_name("report.ipynb", {}, "01a2-9c3f2a") == "report · 9c3f2a"
    # two runs with the same values differ by their ids
    assert readable_name("r.ipynb", {"n": 1}, "aaaa-1") != readable_name(
        "r.ipynb", {"n": 1}, "bbbb-2"
    )


def test_long_values_are_cut() -> None:
    name = readable_name("report.ipynb", {"text": "x" * 500, "items": [1, 2]}, "01a2-9c3f2a")
    assert len(name) <= MAX_NAME_CHARS + len(" · 9c3f2a") and name.endswith("… · 9c3f2a")


def test_an_inline_notebook_has_one_name_from_its_request_or_metadata() -> None:
    document = {"cells": [], "metadata": {"title": "Weekly sales / EU"}}
    assert notebook_label(document) == "Weekly-sales-EU"
    assert display_name(document) == "Weekly-sales-EU.ipynb"  # the result's, the artifacts'
    assert notebook_label(json.dumps(document)) == "Weekly-sales-EU"  # sent as a string
    assert notebook_label(document, "daily") == "daily"  # the request's name first
    assert notebook_label({"cells": [], "metadata": {}}) == "notebook"
    assert notebook_label("s3://b/nb/my report.ipynb") == "my-report"


def test_the_trigger_is_told_from_tags_the_schedule_and_the_first_state() -> None:
    assert trigger_of(["trigger:batch"], "d1") == "batch"
    assert trigger_of(["auto-scheduled"], "d1") == "schedule"
    assert trigger_of([], None) == "cli"
    assert trigger_of([], "d1", "Run from the Prefect UI with defaults") == "ui"  # Quick run
    assert trigger_of([], "d1", "") == "ui"  # the custom run forms: their empty message field
    assert trigger_of([], "d1", None) == "api"  # an API call with no state of its own
    assert trigger_of([], "d1", "nightly, from cron") == "api"


def test_a_name_nobody_chose_is_told_from_one_typed() -> None:
    """The server's ``fine-eel`` and the V2 run form's ``Awesome-Dingo`` are made up; a
    name typed in the form, or sent over HTTP, is kept."""
    for made_up in ("fine-eel", "Awesome-Dingo", "Tasty-Tapir"):
        assert MADE_UP_NAME.match(made_up), made_up
    for typed in ("Q3 close, EU", "sales-2026-q3", "rerun after fix", "Weekly-Sales-EU"):
        assert not MADE_UP_NAME.match(typed), typed
