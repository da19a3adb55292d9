"""The order parameters are injected in: the caller's, even after PostgreSQL's JSONB."""

from __future__ import annotations

import pytest

from notebook_jobs.tasks.engine.parameters import in_order

pytestmark = pytest.mark.unit


def test_the_named_order_comes_first_and_the_rest_keeps_its_own() -> None:
    # what a server on PostgreSQL gives back (JSONB sorts keys by length, then bytes)
    # for `-p v_a 1 -p v_e 5 -p v_b 2 -p v_d 4 -p v_c 3`
    stored = {"v_a": 1, "v_b": 2, "v_c": 3, "v_d": 4, "v_e": 5}
    ordered = in_order(stored, ["v_a", "v_e", "v_b", "v_d", "v_c"])
    assert list(ordered) == ["v_a", "v_e", "v_b", "v_d", "v_c"]
    assert ordered == stored


def test_names_not_given_are_skipped_and_no_order_changes_nothing() -> None:
    assert list(in_order({"a": 1, "b": 2}, ["z", "b"])) == ["b", "a"]
    assert list(in_order({"b": 1, "a": 2}, None)) == ["b", "a"]
