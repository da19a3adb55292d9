"""A Prefect progress artifact that never holds up the notebook it reports on."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.client.orchestration import get_client

# A passing value ("running cell 7" of a fast cell) is shown only if it stays current
# this long, or if the last update is older than this.
MIN_INTERVAL_SECONDS = 0.5
# A run that ends sooner has no progress artifact: nobody could have watched it move,
# and its state says it ended (three API calls fewer for a run of a fast notebook).
SHOWN_AFTER_SECONDS = 1.0


class ProgressArtifact:
    """A progress artifact updated in the background, newest value first.

    Creating it and each update is an API call (10 to 40 ms on a local server); a
    notebook of fast cells would otherwise wait for them between cells, and send one
    per cell. So this is the one throttle of progress updates: at most one request is
    in flight, only the newest value is sent, and a passing value waits until it has
    been current ``MIN_INTERVAL_SECONDS``. The artifact is made only once the run has
    gone on for ``SHOWN_AFTER_SECONDS`` (with the newest value by then), and removed
    when the run ends.

    Example:
        >>> progress = ProgressArtifact("report-progress", "report.ipynb: starting")
        >>> progress.show(50.0, "report.ipynb: running cell 2 (2/4)", passing=True)
        >>> await progress.close()     # removed: the run's state says how it ended
    """

    def __init__(self, key: str, description: str) -> None:
        self._key = key
        self._created: asyncio.Future[UUID] | None = None  # made after SHOWN_AFTER_SECONDS
        self._latest: tuple[float, str] | None = (0.0, description)
        self._sender: asyncio.Future[None] | None = None
        self._later: asyncio.TimerHandle | None = None
        self._first: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            SHOWN_AFTER_SECONDS, self._create
        )
        self._shown_at = time.monotonic()
        self.percent = 0.0  # the newest value shown

    def _create(self) -> None:
        self._first = None
        progress, description = self._latest or (self.percent, "")
        self._latest = None
        self._created = asyncio.ensure_future(
            acreate_progress_artifact(progress, key=self._key, description=description)
        )
        self._shown_at = time.monotonic()

    def show(self, progress: float, description: str, *, passing: bool = False) -> None:
        """Send this value soon; a newer one replaces it.

        Args:
            passing: The value may be over at once (a cell that has just started): it
                is sent now if the last update is older than ``MIN_INTERVAL_SECONDS``,
                else once it has been the newest for that long.
        """
        if self._later is not None:
            self._later.cancel()
            self._later = None
        self.percent = progress
        if self._created is None:  # not made yet: it is made with the newest value
            self._latest = (progress, description)
            return
        waited = time.monotonic() - self._shown_at
        if passing and waited < MIN_INTERVAL_SECONDS:
            self._later = asyncio.get_running_loop().call_later(
                MIN_INTERVAL_SECONDS - waited, self._send_soon, progress, description
            )
            return
        self._send_soon(progress, description)

    def _send_soon(self, progress: float, description: str) -> None:
        self._later = None
        self._shown_at = time.monotonic()
        self._latest = (progress, description)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        assert self._created is not None
        artifact_id = await self._created
        while self._latest is not None:
            progress, description = self._latest
            self._latest = None
            await aupdate_progress_artifact(artifact_id, progress, description=description)

    async def close(self) -> None:
        """Remove the artifact (nothing, for a run that ended before it was made): a
        finished run's state, summary and history say how it ended, and a bar left at
        100 % in every run's Artifacts tab would only be noise.

        Raises:
            Exception: Whatever the API raised for the creation, an update or the removal.
        """
        for timer in (self._first, self._later):
            if timer is not None:
                timer.cancel()
        self._first = self._later = None
        self._latest = None
        if self._created is None:  # nothing was sent, and nothing will be
            return
        if self._sender is not None:
            await self._sender
        artifact_id = await self._created
        async with get_client() as client:
            await client.delete_artifact(artifact_id)
