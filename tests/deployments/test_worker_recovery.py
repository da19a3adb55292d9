"""A run the worker could not start, because the server was away, is not left PENDING."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from notebook_jobs.deployments.worker import schedule_again_if_pending


@pytest.mark.usefixtures("prefect_server")
def test_a_run_left_pending_is_scheduled_again_and_a_started_one_is_not() -> None:
    """The soak found it: a server restart during a run's start left it PENDING for ever."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running

    @flow(name="soak-victim")
    def victim() -> None:
        pass

    error = httpx.ConnectError("All connection attempts failed")
    logger = logging.getLogger("test")

    async def scenario() -> tuple[str, bool, str, bool]:
        async with get_client() as client:
            pending = await client.create_flow_run(victim, state=Pending())
            running = await client.create_flow_run(victim, state=Running())
        again = await schedule_again_if_pending(pending.id, error, logger)
        left = await schedule_again_if_pending(running.id, error, logger)
        async with get_client() as client:
            first = (await client.read_flow_run(pending.id)).state
            second = (await client.read_flow_run(running.id)).state
        assert first is not None and second is not None
        assert "could not start it" in (first.message or "")
        return first.type.value, again, second.type.value, left

    assert asyncio.run(scenario()) == ("SCHEDULED", True, "RUNNING", False)
