"""Run names: readable, unique, short enough for the runs list (pure)."""

from __future__ import annotations

from notebook_jobs.flows.run_labels import MAX_NAME_CHARS, readable_name


def test_a_name_says_the_notebook_its_values_and_which_run() -> None:
    name = readable_name("s3://b/nb/report.ipynb", {"n": 20, "label": "monthly"}, "3f2a9c01")
    assert name == "report n=20 label=monthly · 3f2a"
    assert readable_name("report.ipynb", {}, "3f2a9c01") == "report · 3f2a"
    # two runs with the same values differ by their ids
    assert readable_name("r.ipynb", {"n": 1}, "aaaa-1") != readable_name(
        "r.ipynb", {"n": 1}, "bbbb-2"
    )


def test_long_values_are_cut() -> None:
    name = readable_name("report.ipynb", {"text": "x" * 500, "items": [1, 2]}, "3f2a9c01")
    assert len(name) <= MAX_NAME_CHARS + len(" · 3f2a") and name.endswith("… · 3f2a")
