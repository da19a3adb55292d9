"""What a runtime changes for its whole process while it is current, and puts back after.

Two things a process that runs notebooks wants are process-wide by nature, not per run:

- **One ERROR line per failed run** (``quiet_own_errors``). A notebook that raised ends
  its run with our ``NotebookExecutionError``. Prefect's engine then logs, at ERROR,
  "Encountered exception during execution" with the traceback of the flow's ``raise``
  (framework frames that say nothing an analyst can use) and "Finished in state
  Failed(...)" for the task and for the flow; with the run's own line that made four
  ERROR lines for one failure, and filtering the log to errors showed the least useful
  first. Our errors are expected outcomes whose message says what to fix and whose run
  logs them once (``flows.run_ending.end_run``), so Prefect's records of them lose their
  traceback and come down to WARNING; any other exception keeps its traceback and level.
  A filter on Prefect's flow-run and task-run loggers, which Python's logging keeps
  per process.
- **One TLS context for Prefect's clients** (``shared_tls_contexts``). ``PrefectClient``
  builds a TLS context for every client it creates, even for an ``http://`` API, and
  parsing the CA bundle costs about 40 ms of CPU here. A worker creates a dozen clients
  per flow run (the engine, result storage, tags, the cancellation watcher...):
  measured with py-spy, 0.3 s of CPU per run. A context is safe to share between
  clients; Prefect's client module is patched to hand out one per set of arguments.

``tasks.runtime.using_runtime`` enters each when its ``Runtime`` asks for it; a runtime
made current inside one that already did (a worker's per-run runtime) leaves it to the
outer one, which puts it back when it ends. Nothing here happens at import.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import ssl
from collections.abc import Iterator
from typing import Any

from notebook_jobs.blocks.exceptions import NotebookJobError

ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
# the flows and tasks whose failures are ours to report (their names in Prefect)
OWN_RUNS = re.compile(r"^(run-notebook|execute-notebook|stage-notebook|store-artefacts)$")


def _ours(record: logging.LogRecord) -> bool:
    name = getattr(record, "task_name", None) or getattr(record, "flow_name", None)
    return bool(name and OWN_RUNS.match(str(name)))


class OwnErrorsWithoutTraceback(logging.Filter):
    """Our errors, as Prefect's engine logs them: no traceback, WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, NotebookJobError):
            record.exc_info = None
            record.exc_text = None
            _lower(record)
        elif (
            record.levelno >= logging.ERROR
            and not record.exc_info
            and str(record.msg).startswith("Finished in state Failed")
            and _ours(record)
        ):
            _lower(record)
        return True


def _lower(record: logging.LogRecord) -> None:
    if record.levelno > logging.WARNING:
        record.levelno = logging.WARNING
        record.levelname = logging.getLevelName(logging.WARNING)


@contextlib.contextmanager
def quiet_own_errors() -> Iterator[None]:
    """Prefect's engine logs our errors without traceback, as WARNING, in this block.

    A no-op if an enclosing block already did.
    """
    loggers = [logging.getLogger(name) for name in ENGINE_LOGGERS]
    if any(isinstance(f, OwnErrorsWithoutTraceback) for f in loggers[0].filters):
        yield
        return
    quiet = OwnErrorsWithoutTraceback()
    for engine_logger in loggers:
        engine_logger.addFilter(quiet)
    try:
        yield
    finally:
        for engine_logger in loggers:
            engine_logger.removeFilter(quiet)


class _SharedTLS:
    """``ssl`` for Prefect's client module, handing out one context per set of arguments."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    @staticmethod
    @functools.cache
    def create_default_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        return ssl.create_default_context(*args, **kwargs)


@contextlib.contextmanager
def shared_tls_contexts() -> Iterator[None]:
    """Every Prefect client made in this block shares its TLS context with the others.

    A no-op if an enclosing block already did.
    """
    import prefect.client.orchestration as orchestration

    if isinstance(orchestration.ssl, _SharedTLS):  # type: ignore[attr-defined]
        yield
        return
    orchestration.ssl = _SharedTLS()  # type: ignore[assignment,attr-defined]
    try:
        yield
    finally:
        orchestration.ssl = ssl  # type: ignore[attr-defined]
