"""What a process that runs notebooks owns, in one object handed to the runs it starts.

A worker, the command line and a batch each make a ``Runtime`` and start their runs inside
``using_runtime(runtime)``: a ``ContextVar``, so the flow, its tasks, the threads Prefect
runs sync tasks in and the asyncio tasks they start all see it. It holds:

- the ``LocalExecutor`` that owns the kernels and fork servers runs use;
- the sinks that hear each cell as it starts and ends (a terminal's progress bar, the
  local worker's stream to ``nbjobs run``) and each result once ``result.json`` is stored;
- where the worker's file server serves local stores (``ArtefactStore.link`` signs links
  to it; ``blocks.local_links.serving_files_at``);
- the two process-wide things it changes while current and puts back after
  (``tasks.process_wide``): Prefect's engine logging our errors once, without a
  framework traceback, and Prefect's clients sharing one TLS context (a worker's).

Nothing of it is found through ``os.environ``, a module-level list or an import's side
effect. With none made, a run sees ``NO_RUNTIME``: no executor (it uses the process's
own), no sinks, ``file://`` links, and Prefect's logging as Prefect made it.

Example:
    >>> with using_runtime(Runtime(cell_sinks=(print,))):
    ...     current_runtime().cell_sinks == (print,)
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from notebook_jobs.blocks.local_links import serving_files_at
from notebook_jobs.tasks.process_wide import quiet_own_errors, shared_tls_contexts

if TYPE_CHECKING:
    from notebook_jobs.tasks.engine.cells import CellEvent
    from notebook_jobs.tasks.executors import LocalExecutor
    from notebook_jobs.tasks.models import NotebookResult

CellSink = Callable[["CellEvent"], None]
ResultSink = Callable[["NotebookResult"], None]


@dataclass(frozen=True)
class Runtime:
    """What runs started in a ``using_runtime`` block share (see the module).

    Attributes:
        executor: Runs kernels here; ``None``: the process's own (``process_executor``).
        cell_sinks: Called with each cell event, in the run's event loop.
        result_sinks: Called with each run's result once ``result.json`` is stored,
            before its Prefect artifacts are published.
        files_url: The worker's file server, which local-store links point at.
        quiet_own_errors: Prefect's engine logs our errors (expected outcomes, each
            logged once by its run) without traceback, as WARNING.
        shared_tls: Prefect's clients share one TLS context (a worker makes a dozen
            clients per run).
    """

    executor: LocalExecutor | None = None
    cell_sinks: tuple[CellSink, ...] = ()
    result_sinks: tuple[ResultSink, ...] = ()
    files_url: str | None = None
    quiet_own_errors: bool = True
    shared_tls: bool = False


_current: ContextVar[Runtime | None] = ContextVar("nbjobs_runtime", default=None)
NO_RUNTIME = Runtime()  # frozen and empty: what a run outside any runtime sees


def current_runtime() -> Runtime:
    """The runtime of the run this code belongs to (``NO_RUNTIME`` outside any)."""
    return _current.get() or NO_RUNTIME


@contextlib.contextmanager
def using_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Runs started in this block (and every task they start) use ``runtime``.

    Args:
        runtime: What they share; it is current until the block ends.

    Yields:
        ``runtime``.
    """
    token = _current.set(runtime)
    try:
        with contextlib.ExitStack() as process_wide:
            process_wide.enter_context(serving_files_at(runtime.files_url))
            if runtime.quiet_own_errors:
                process_wide.enter_context(quiet_own_errors())
            if runtime.shared_tls:
                process_wide.enter_context(shared_tls_contexts())
            yield runtime
    finally:
        _current.reset(token)


def current_executor() -> LocalExecutor | None:
    """The executor of the current runtime, if it has one."""
    return current_runtime().executor


@contextlib.contextmanager
def using_executor(executor: LocalExecutor | None) -> Iterator[None]:
    """The current runtime, with ``executor`` for the runs started in this block.

    Args:
        executor: Runs kernels for them; None: each uses the process's own.
    """
    with using_runtime(replace(current_runtime(), executor=executor)):
        yield
