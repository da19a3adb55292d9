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
