"""What both halves of the scheduler share: the Prefect API in a thread, a local run
started at once, and a notebook's declared parameters."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.scheduler import BaseScheduler

from notebook_jobs.blocks.exceptions import APIError, NotebookJobError
from notebook_jobs.deployments.api import API_PAGE_SIZE, PrefectHTTP
from notebook_jobs.deployments.lab.connection import Connection, connect
from notebook_jobs.deployments.lab.job_definitions import definitions_filter
from notebook_jobs.deployments.light_commands import declared_parameters_light
from notebook_jobs.deployments.local_server import LocalServer

T = TypeVar("T")


def offset_of(token: str | None) -> int:
    """A list's ``next_token`` (ours: how many came before) as an offset.

    Raises:
        SchedulerError: A token this backend never gave.
    """
    try:
        return max(int(token or 0), 0)
    except ValueError:
        raise SchedulerError(f"next_token {token!r} is not one notebook-jobs gave") from None


def start_now(local: LocalServer, run_id: str, channel: socket.socket | None = None) -> None:
    """Have the local worker start ``run_id`` at once rather than at its next poll
    (``deployments/run_channel.py``): follow it, in a thread that reads what the worker
    sends until it ends or falls silent."""
    followed = local.follow(run_id, channel)
    if followed is None:
        return  # the worker's own poll takes it

    def drain() -> None:
        try:
            with followed, followed.makefile("rb") as lines:
                for _ in lines:
                    pass
        except OSError:  # silence (a long cell): the run goes on without a follower
            pass

    threading.Thread(target=drain, daemon=True, name=f"nbjobs-lab-{run_id}").start()


class SchedulerPlumbing(BaseScheduler):  # type: ignore[misc]
    """``BaseScheduler`` with the helpers the job and job definition methods share."""

    def connection(self) -> Connection:
        return connect()

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in a thread, an expected failure as one-line ``SchedulerError``."""
        try:
            return await asyncio.to_thread(work, *args)
        except NotebookJobError as error:  # ours: each says what to fix in one line
            raise SchedulerError(str(error)) from None

    @staticmethod
    def _get(api: PrefectHTTP, path: str, what: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = api.request("GET", path).json()
        except APIError as error:
            if error.status_code == 404:
                raise SchedulerError(f"no such {what}: it was deleted in Prefect") from None
            raise
        return found

    def _definition_ids(self, api: PrefectHTTP, runs: list[dict[str, Any]]) -> set[str]:
        """Which of the deployments ``runs`` came from are job definitions."""
        ids = {str(run["deployment_id"]) for run in runs if run.get("deployment_id")}
        if not ids:
            return set()
        criteria = definitions_filter()
        criteria["deployments"]["id"] = {"any_": sorted(ids)}
        body = {**criteria, "limit": API_PAGE_SIZE}
        found = api.request("POST", "/deployments/filter", json=body, idempotent=True).json()
        return {d["id"] for d in found}

    def _declared(self, path: str) -> list[dict[str, Any]]:
        declared = declared_parameters_light(path)
        if declared is None:  # another language: as papermill's translator reads it
            from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
            from notebook_jobs.tasks.engine.staging import declared_parameters

            declared = declared_parameters(parse_notebook(fetch_notebook_source(path)))
        return declared
