"""The one retry loop for a busy HTTP server."""

from __future__ import annotations

import pytest

from notebook_jobs.blocks.retry import retry_busy

pytestmark = pytest.mark.unit


def test_busy_answers_are_asked_again_with_backoff_and_others_are_not() -> None:
    answers = iter([503, 429, 200, 503])
    waits: list[float] = []
    calls: list[int] = []

    def send() -> int:
        calls.append(1)
        return next(answers)

    assert retry_busy(send, int, attempts=5, backoff_seconds=0.5, sleep=waits.append) == 200
    assert (len(calls), waits) == (3, [0.5, 1.0])
    # an error that is not "busy" is the caller's to judge, at once
    assert retry_busy(lambda: 404, int, attempts=5, backoff_seconds=0.5, sleep=waits.append) == 404
    assert waits == [0.5, 1.0]


def test_the_last_busy_answer_is_returned_when_attempts_are_spent() -> None:
    waits: list[float] = []
    assert retry_busy(lambda: 503, int, attempts=3, backoff_seconds=1, sleep=waits.append) == 503
    assert waits == [1, 2]
