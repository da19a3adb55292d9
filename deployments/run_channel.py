"""Local followers of flow runs: ``nbjobs run`` hears its run's progress, log and result.

The local server's worker listens on a Unix socket. A client on the same machine that
has created a flow run through the API sends ``{"follow": "<flow run id>"}``; the
worker starts that run at once and streams its cell events, log lines and result
back as JSON lines (see ``deployments/worker.py``).

Before creating the run, the client may first send its environment and the idempotency
key it will create the run with, ``{"environment": {...}, "key": "nbjobs-run-..."}``,
and wait for ``{"event": "ready"}``: the run's kernel then gets that environment on
top of the worker's, as papermill's kernel gets its caller's, whoever starts the run
(this hand-off or a poll that found it first). The environment stays in the worker's
memory while the connection is open, never in Prefect. The socket's folder is its
owner's alone (0700), so only the owner's processes can hand one over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from notebook_jobs.tasks.runtime import Runtime

FOLLOW_QUEUE_SIZE = 1000  # events kept for a slow follower; newer ones are dropped
_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class RunChannel:
    """Streams flow runs' progress, logs and outcome to local followers (JSON lines)."""

    def __init__(self) -> None:
        self._followers: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {}
        # idempotency key of a run about to be created -> its caller's environment
        self._environments: dict[str, dict[str, str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler = _FollowerLogHandler(self)

    def attach(self) -> None:
        """Start routing run log records to followers (cell events and results come
        through the runtime of each run: ``sinks``)."""
        self._loop = asyncio.get_running_loop()
        for name in _RUN_LOGGERS:
            logging.getLogger(name).addHandler(self._handler)

    def detach(self) -> None:
        for name in _RUN_LOGGERS:
            logging.getLogger(name).removeHandler(self._handler)

    def sinks(self, runtime: Runtime) -> Runtime:
        """``runtime``, with this channel hearing its runs' cells and results."""
        return replace(
            runtime,
            cell_sinks=(*runtime.cell_sinks, self._on_cell),
            result_sinks=(*runtime.result_sinks, self._on_result),
        )

    def environment_for(self, idempotency_key: str | None) -> dict[str, str] | None:
        """The environment a caller handed over for the run created with this key."""
        return self._environments.get(idempotency_key or "")

    def following(self, run_id: str) -> bool:
        """Whether anyone follows ``run_id``."""
        return run_id in self._followers

    def publish(self, run_id: str, message: dict[str, Any]) -> None:
        """Send ``message`` to the followers of ``run_id`` (from the worker's loop)."""
        for queue in self._followers.get(run_id, []):
            if queue.full() and message.get("event") in ("result", "final"):
                queue.get_nowait()  # a slow follower loses a line of output, never its result
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)

    def publish_threadsafe(self, run_id: str, message: dict[str, Any]) -> None:
        if run_id not in self._followers or self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self.publish(run_id, message)
        else:
            self._loop.call_soon_threadsafe(self.publish, run_id, message)

    def _publish_to_current_run(self, message: dict[str, Any]) -> None:
        """Send ``message`` to the followers of the flow run this code runs in."""
        from prefect.runtime import flow_run

        run_id = flow_run.get_id()
        if run_id and run_id in self._followers:
            self.publish(run_id, message)

    def _on_result(self, result: Any) -> None:
        """The result is stored: the follower can report it while Prefect's artifacts and
        final state are still being written (a few hundred milliseconds on SQLite)."""
        self._publish_to_current_run(
            {"event": "result", "document": result.model_dump(mode="json")}
        )

    def _on_cell(self, event: Any) -> None:
        if event.phase == "output":  # prints reach the follower through the log
            return
        status = "running" if event.phase == "start" else None
        self._publish_to_current_run(
            {
                "event": "cell",
                "index": event.index,
                "done": event.done,
                "total": event.total,
                "status": status or (event.report.status if event.report else "done"),
            }
        )

    async def serve(self, path: Path, on_follow: Any) -> asyncio.Server:
        """Listen on ``path``; ``on_follow(run_id)`` is called when a client starts following."""

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(FOLLOW_QUEUE_SIZE)
            run_id = ""
            key = ""
            # a follower that leaves early (Ctrl-C, or polling the API instead) closes
            # its end: stop waiting for its run then, not when the run ends
            left: asyncio.Future[bytes] | None = None
            try:
                request = json.loads(await reader.readline() or b"{}")
                environment = request.get("environment")
                if isinstance(environment, dict) and request.get("key"):
                    key = str(request["key"])
                    self._environments[key] = {str(k): str(v) for k, v in environment.items()}
                    writer.write(b'{"event": "ready"}\n')
                    await writer.drain()
                    request = json.loads(await reader.readline() or b"{}")
                left = asyncio.ensure_future(reader.read())
                run_id = str(request.get("follow", ""))
                if not run_id:
                    return
                self._followers.setdefault(run_id, []).append(queue)
                on_follow(run_id)
                while True:
                    getting = asyncio.ensure_future(queue.get())
                    await asyncio.wait({getting, left}, return_when=asyncio.FIRST_COMPLETED)
                    if not getting.done():
                        getting.cancel()
                        return
                    message = getting.result()
                    writer.write(json.dumps(message, default=str).encode() + b"\n")
                    await writer.drain()
                    if message.get("event") in ("result", "final"):
                        return
            except (ConnectionError, ValueError, AttributeError):
                return  # the follower left mid-write, or sent nonsense
            finally:
                self._environments.pop(key, None)
                if left is not None:
                    left.cancel()
                followers = self._followers.get(run_id, [])
                if queue in followers:
                    followers.remove(queue)
                if not followers:
                    self._followers.pop(run_id, None)
                writer.close()

        path.unlink(missing_ok=True)
        return await asyncio.start_unix_server(on_connection, path=str(path))


class _FollowerLogHandler(logging.Handler):
    """Forwards log records of followed flow runs (their cells' output, their errors)."""

    def __init__(self, channel: RunChannel) -> None:
        super().__init__(logging.INFO)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        run_id = str(getattr(record, "flow_run_id", ""))
        if run_id:
            try:
                self.channel.publish_threadsafe(
                    run_id,
                    {"event": "log", "level": record.levelname, "message": record.getMessage()},
                )
            except Exception:  # a closed loop at shutdown: never into the code that logged
                self.handleError(record)
