"""A Prefect progress artifact that never holds up the notebook it reports on."""

from __future__ import annotations

import asyncio
from uuid import UUID

from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact


class ProgressArtifact:
    """A progress artifact updated in the background, newest value first.

    Creating it and each update is an API call (10 to 40 ms on a local server); a
    notebook of fast cells would otherwise wait for them between cells. Updates are
    coalesced: at most one request is in flight, and only the newest value is sent.

    Example:
        >>> progress = ProgressArtifact("report-progress", "report.ipynb: starting")
        >>> progress.show(50.0, "report.ipynb: running cell 2 (2/4)")   # returns at once
        >>> await progress.close(100.0, "report.ipynb: completed")     # sent by now
    """

    def __init__(self, key: str, description: str) -> None:
        self._created: asyncio.Future[UUID] = asyncio.ensure_future(
            acreate_progress_artifact(0.0, key=key, description=description)
        )
        self._latest: tuple[float, str] | None = None
        self._sender: asyncio.Future[None] | None = None

    def show(self, progress: float, description: str) -> None:
        """Send this value soon; a newer one sent before it replaces it."""
        self._latest = (progress, description)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        artifact_id = await self._created
        while self._latest is not None:
            progress, description = self._latest
            self._latest = None
            await aupdate_progress_artifact(artifact_id, progress, description=description)

    async def close(self, progress: float, description: str) -> None:
        """Send the final value and wait until it is stored.

        Raises:
            Exception: Whatever the API raised for the creation or an update.
        """
        self.show(progress, description)
        assert self._sender is not None
        await self._sender
