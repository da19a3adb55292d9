"""The progress artifact: updates never wait for the API, and the last value wins."""

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


def test_updates_are_coalesced_and_the_final_value_is_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[float] = []
    real_update = progress_artifact.aupdate_progress_artifact

    async def counted(artifact_id: Any, progress: float, description: str | None = None) -> Any:
        sent.append(progress)
        return await real_update(artifact_id, progress, description=description)

    monkeypatch.setattr(progress_artifact, "aupdate_progress_artifact", counted)
    monkeypatch.setattr(progress_artifact, "SHOWN_AFTER_SECONDS", 0.0)

    @flow
    async def many_fast_cells() -> None:
        progress = ProgressArtifact(KEY, "t.ipynb: starting kernel")
        for done in range(200):  # show() is not awaited: a cell never waits for the API
            progress.show(done / 2, f"t.ipynb: running cell {done}")
            await asyncio.sleep(0)
        await progress.close(100.0, "t.ipynb: completed")

    asyncio.run(many_fast_cells())

    async def stored() -> list[Any]:
        async with get_client() as client:
            return list(
                await client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[KEY]))
                )
            )

    artifacts = asyncio.run(stored())
    assert len(artifacts) == 1  # one artifact, updated in place
    assert artifacts[0].data == 100.0
    assert artifacts[0].description == "t.ipynb: completed"
    # 201 values shown, a handful sent: only the newest value is sent when the API is free
    assert sent[-1] == 100.0 and len(sent) < 20, sent


def stored_with(key: str) -> list[Any]:
    return asyncio.run(_read(key))


def test_a_run_shorter_than_the_delay_makes_none_and_a_longer_one_its_newest_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody watches a bar that lives under ``SHOWN_AFTER_SECONDS``: no API call at all;
    a run still going then gets its artifact with the value current at that moment."""
    monkeypatch.setattr(progress_artifact, "SHOWN_AFTER_SECONDS", 0.3)

    @flow
    async def reporting(key: str, seconds: float) -> None:
        progress = ProgressArtifact(key, "t.ipynb: starting kernel")
        progress.show(50.0, "t.ipynb: running cell 1 (2/4)")
        await asyncio.sleep(seconds)
        if seconds > 0.3:
            made = await _read(key)
            assert [(a.data, a.description) for a in made] == [
                (50.0, "t.ipynb: running cell 1 (2/4)")
            ]
        await progress.close(100.0, "t.ipynb: completed")

    asyncio.run(reporting("short-progress", 0.05))
    assert stored_with("short-progress") == []
    asyncio.run(reporting("long-progress", 1.0))
    assert [(a.data, a.description) for a in stored_with("long-progress")] == [
        (100.0, "t.ipynb: completed")
    ]


async def _read(key: str) -> list[Any]:
    async with get_client() as client:
        return list(
            await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
        )
