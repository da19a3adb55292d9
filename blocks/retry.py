"""Asking a busy server again: HTTP 429 and 503, with exponential backoff.

Used by the notebook fetch (httpx); the command line's API client
(``deployments/api.py``) has its own, bounded by a deadline rather than a count.
Standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

# Prefect answers 503 when its database is busy (SQLite's "database is locked"); 429
# is any server's "too many requests".
BUSY_STATUSES = frozenset({429, 503})
Response = TypeVar("Response")


def retry_busy(
    send: Callable[[], Response],
    status_of: Callable[[Response], int],
    *,
    attempts: int,
    backoff_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Response:
    """``send()`` until its answer is not 429 or 503, or ``attempts`` are spent.

    Waits ``backoff_seconds``, then twice that, and so on, between attempts.

    Returns:
        The last answer, busy or not: the caller decides what an error status means.

    Example:
        >>> retry_busy(lambda: httpx.get(url), lambda r: r.status_code, attempts=5,
        ...            backoff_seconds=0.5)
        <Response [200 OK]>
    """
    for attempt in range(attempts - 1):
        response = send()
        if status_of(response) not in BUSY_STATUSES:
            return response
        sleep(backoff_seconds * 2**attempt)
    return send()
