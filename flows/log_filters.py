"""One ERROR line per failed run: the run's own, with the notebook's traceback.

A notebook that raised ends its run with our ``NotebookExecutionError``. Prefect's
engine then logs, at ERROR, "Encountered exception during execution" with the
traceback of the flow's ``raise`` (framework frames that say nothing an analyst can
use) and "Finished in state Failed(...)" for the task and for the flow; with the
run's own line that made four ERROR lines for one failure, and filtering the log to
errors showed the least useful first. Our errors are expected outcomes whose message
says what to fix and whose run logs them once (``run_ending.end_run``), so Prefect's
records of them lose their traceback and come down to WARNING; any other exception
keeps its own traceback and level.
"""

from __future__ import annotations

import logging
import re

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


def install() -> None:
    """Add the filter to Prefect's flow-run and task-run loggers (once)."""
    for name in ENGINE_LOGGERS:
        engine_logger = logging.getLogger(name)
        if not any(isinstance(f, OwnErrorsWithoutTraceback) for f in engine_logger.filters):
            engine_logger.addFilter(OwnErrorsWithoutTraceback())
