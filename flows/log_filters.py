"""Keep Prefect's own traceback out of a run's log when the error is one of ours.

A notebook that raised ends its run with our ``NotebookExecutionError``; Prefect's
engine then logs "Encountered exception during execution" with the traceback of the
flow's ``raise``: framework frames that say nothing an analyst can use, above the
notebook's own traceback (which ``run_notebook`` logs at ERROR). Our errors are
expected outcomes with messages that say what to fix, so their records keep their
message and level and lose only the traceback; any other exception keeps its own.
"""

from __future__ import annotations

import logging

from notebook_jobs.blocks.exceptions import NotebookJobError

ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class OwnErrorsWithoutTraceback(logging.Filter):
    """Drop the traceback of a record whose exception is a ``NotebookJobError``."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, NotebookJobError):
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Add the filter to Prefect's flow-run and task-run loggers (once)."""
    for name in ENGINE_LOGGERS:
        engine_logger = logging.getLogger(name)
        if not any(isinstance(f, OwnErrorsWithoutTraceback) for f in engine_logger.filters):
            engine_logger.addFilter(OwnErrorsWithoutTraceback())
