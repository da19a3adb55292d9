"""The progress artifact: updates never wait for the API, the last value wins, and it
is gone when the run ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect import flow, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

import notebook_jobs.tasks.progress_artifact as progress_artifact
from notebook_jobs.tasks.progress_artifact import ProgressArtifact

pytestmark = pytest.mark.usefixtures("prefect_server")
KEY = "progress-test-progress"


def test_updates_are_coalesced_and_the_artifact_is_removed_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[float] = []
    real_update = progress_artifact.aupdate_progress_artifact

    async def counted(artifact_id: Any, progress: float, description: str | None = None) -> Any:
        sent.append(progress)
        return await real_update(artifact_id, progress, description=description)

    monkeypatch.setattr(progress_artifact, "aupdate_progress_artifact", counted)
    monkeypatch.setattr(progress_artifact, "SHOWN_AFTER_SECONDS", 0.0)
    seen: list[Any] = []

    @flow
    async def many_fast_cells() -> None:
        progress = ProgressArtifact(KEY, "t.ipynb: starting kernel")
        for done in range(200):  # show() is not awaited: a cell never waits for the API
            progress.show(done / 2, f"t.ipynb: running cell {done}")
            await asyncio.sleep(0)
        await asyncio.sleep(0.6)  # the newest value is sent once the API is free
        seen.extend((a.data, a.description) for a in await _read(KEY))
        await progress.close()

    asyncio.run(many_fast_cells())
    # while the run went on: one artifact, updated in place to the newest value
    assert seen == [(99.5, "t.ipynb: running cell 199")]
    # 200 values shown, a handful sent: only the newest value is sent when the API is free
    assert sent[-1] == 99.5 and len(sent) < 20, sent
    assert stored_with(KEY) == []  # the run ended: its bar is gone


def stored_with(key: str) -> list[Any]:
    return asyncio.run(_read(key))


def test_a_run_shorter_than_the_delay_makes_none_and_a_longer_one_its_newest_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody watches a bar that lives under ``SHOWN_AFTER_SECONDS``: no API call at all;
    a run still going then gets its artifact with the value current at that moment."""
    monkeypatch.setattr(progress_artifact, "SHOWN_AFTER_SECONDS", 0.3)
    made: list[Any] = []

    @flow
    async def reporting(key: str, seconds: float) -> None:
        progress = ProgressArtifact(key, "t.ipynb: starting kernel")
        progress.show(50.0, "t.ipynb: running cell 1 (2/4)")
        await asyncio.sleep(seconds)
        made.extend((a.data, a.description) for a in await _read(key))
        await progress.close()

    asyncio.run(reporting("short-progress", 0.05))
    assert made == [] and stored_with("short-progress") == []
    asyncio.run(reporting("long-progress", 1.0))
    assert made == [(50.0, "t.ipynb: running cell 1 (2/4)")]
    assert stored_with("long-progress") == []


async def _read(key: str) -> list[Any]:
    async with get_client() as client:
        return list(
            await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
        )
