"""A job's outputs, copied from our store into the JupyterLab workspace.

jupyter-scheduler's default copies from its staging folder with fsspec in a separate
process; our runs' artefacts are in the run's store (a local folder, or S3 behind
presigned links), listed by the run's ``result.json``. The copy lands where
jupyter-scheduler puts it (``jobs/<notebook>-<job id>/``, the names from
``get_job_filenames``), so the panel's links open it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.job_files_manager import JobFilesManager

from notebook_jobs.blocks.exceptions import APIError
from notebook_jobs.deployments.api import PrefectHTTP

# result.json's artefact keys (and link names) for each of jupyter-scheduler's formats
ARTEFACT_OF = {"ipynb": "notebook", "html": "html", "input": "input"}


def artefact_bytes(api: PrefectHTTP, artefacts: dict[str, Any], key: str) -> bytes:
    """One stored artefact: read from the store's folder when it is on this machine,
    else through its link (presigned for S3, the worker's file server for a local store).

    Raises:
        SchedulerError: The run stored no such artefact, or it cannot be read.
    """
    stored = artefacts.get(key) if key in ARTEFACT_OF.values() else None
    if stored is None and key.startswith("files/"):
        stored = (artefacts.get("files") or {}).get(key.removeprefix("files/"))
    if isinstance(stored, str) and stored.startswith("/") and Path(stored).is_file():
        return Path(stored).read_bytes()
    link = (artefacts.get("links") or {}).get(key)
    if not link:
        raise SchedulerError(f"the run stored no {key} (its store: {artefacts.get('prefix')})")
    try:
        return api.request("GET", link).content
    except APIError as error:
        raise SchedulerError(f"the run's {key} could not be read from its store: {error}") from None


class StoredJobFiles(JobFilesManager):  # type: ignore[misc]
    """``download_files``: the run's executed notebook, HTML, input and written files."""

    async def copy_from_staging(self, job_id: str, redownload: bool | None = False) -> None:
        await asyncio.to_thread(self._copy, job_id, bool(redownload))

    def _copy(self, job_id: str, redownload: bool) -> None:
        scheduler = self.scheduler
        job = scheduler.get_job_now(job_id, job_files=False)
        names = scheduler.get_job_filenames(job)
        folder = Path(scheduler.get_local_output_path(job))
        with scheduler.connection().client() as api:
            try:
                artefacts = api.result(job_id).get("artefacts") or {}
            except LookupError:
                raise SchedulerError(
                    f"job {job_id} has no stored outputs yet (it is {job.status.value.lower()})"
                ) from None
            wanted = [(names[f], ARTEFACT_OF[f]) for f in [*job.output_formats, "input"]]
            wanted += [(f"files/{name}", f"files/{name}") for name in artefacts.get("files") or {}]
            folder.mkdir(parents=True, exist_ok=True)
            for name, key in wanted:
                target = folder / name
                if target.exists() and not redownload:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(artefact_bytes(api, artefacts, key))


def delete_stored(run: dict[str, Any], artefacts: dict[str, Any]) -> None:
    """Delete a run's folder from the store it was written to (the run's ``store``
    parameter, or the default).

    Raises:
        ArtefactStoreError: The store cannot be opened or the folder deleted.
        SchedulerError: The folder is not inside that store (it was moved).
    """
    from notebook_jobs.blocks.store import open_store  # Prefect's blocks: only here

    store = open_store((run.get("parameters") or {}).get("store"))
    prefix = str(artefacts.get("prefix") or "")
    if not prefix.startswith(store.root + "/"):
        raise SchedulerError(f"the run's outputs at {prefix} are not in its store {store.root}")
    store.delete_folder(prefix.removeprefix(store.root + "/"))
