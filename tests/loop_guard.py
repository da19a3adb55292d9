"""Catch our code making a blocking call on a running event loop.

A worker runs every notebook on one event loop, so a file tree moved, an archive
written, a store written to, a block loaded or a command waited for on that loop
stalls every other run (STYLE.md: nothing blocks the loop). Timing the loop's stalls
would make a timed assertion; this asks a question with a yes or no answer instead:
was the call made in a thread that is running an event loop, from our code?

Each guarded function is replaced, for the test, wherever it is bound (its own module
and every ``notebook_jobs`` module that imported it by name). A call is recorded when
the calling thread has a running loop and a ``notebook_jobs`` frame is on the stack;
calls from ``asyncio.to_thread`` have no running loop in their thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

OURS = "notebook_jobs."


def _guarded() -> list[tuple[object, str]]:
    """(owner, attribute) of every call that blocks: file trees, stores, commands, waits."""
    import prefect.futures

    from notebook_jobs.blocks import store

    return [
        (shutil, "move"),
        (shutil, "make_archive"),
        (shutil, "rmtree"),
        (shutil, "copytree"),
        (shutil, "copy2"),
        (pathlib.Path, "rglob"),
        (subprocess, "run"),
        (time, "sleep"),
        (store, "open_store"),
        (store.ArtefactStore, "put_file"),
        (store.ArtefactStore, "put_bytes"),
        (store.ArtefactStore, "get_bytes"),
        (concurrent.futures.Future, "result"),
        (prefect.futures.PrefectConcurrentFuture, "result"),
        (prefect.futures.PrefectDistributedFuture, "result"),
    ]


def _our_caller() -> str | None:
    """``module:line`` of the innermost ``notebook_jobs`` frame on this thread's stack."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith(OURS):
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@contextmanager
def blocking_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Yield the list that collects ``"shutil.move from notebook_jobs...:123"`` lines."""
    calls: list[str] = []

    def guard(what: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if _on_a_loop() and (caller := _our_caller()):
                calls.append(f"{what} from {caller}")
            return original(*args, **kwargs)

        return guarded

    for owner, attribute in _guarded():
        original = (
            owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
        )
        label = f"{getattr(owner, '__name__', owner)}.{attribute}"
        if isinstance(original, (staticmethod, classmethod)):
            continue
        replacement = guard(label, original)
        monkeypatch.setattr(owner, attribute, replacement)
        if isinstance(owner, type):
            continue
        for name, module in list(sys.modules.items()):
            if name.startswith(OURS) and getattr(module, attribute, None) is original:
                monkeypatch.setattr(module, attribute, replacement)
    yield calls


@pytest.fixture
def no_blocking_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if our code made a blocking call on a running event loop."""
    with blocking_calls(monkeypatch) as calls:
        yield calls
    assert calls == [], "blocking calls on the event loop:\n" + "\n".join(calls)
