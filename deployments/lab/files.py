"""A job's outputs, copied from our store into the JupyterLab workspace.

jupyter-scheduler's default copies from its staging folder with fsspec in a separate
process; our runs' artefacts are in the run's store (a local folder, or S3 behind
presigned links), listed by the run's ``result.json``. The copy lands where
jupyter-scheduler puts it (``jobs/<notebook>-<job id>/``, the names from
``get_job_filenames``), so the panel's links open it.

What a ``result.json`` names is not trusted beyond the run's own folders: the panel lists
every run on the server, and a run is whoever made it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.job_files_manager import JobFilesManager

from notebook_jobs.blocks.exceptions import APIError, ArtefactStoreError
from notebook_jobs.deployments.api import PrefectHTTP
from notebook_jobs.tasks.names import RUN_FLOW

# result.json's artefact keys (and link names) for each of jupyter-scheduler's formats
ARTEFACT_OF = {"ipynb": "notebook", "html": "html", "input": "input"}


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused if it would land outside ``folder`` (``../``, ``/``).

    Raises:
        SchedulerError: The name climbs out.
    """
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise SchedulerError(f"the run names a file outside its folder: {name!r}")
    return target


def artefact_bytes(
    api: PrefectHTTP, place: tuple[Any, str], artefacts: dict[str, Any], key: str
) -> bytes:
    """One stored artefact of the run whose store and folder are ``place``
    (``run_folder``): read from the folder when it is on this machine, else through its
    link (presigned for S3, the worker's file server for a local store), else (a
    written file past the summary's first links) from the store itself.

    Raises:
        SchedulerError: The run stored no such artefact, names one outside its folder,
            or it cannot be read.
    """
    store, folder = place
    stored = artefacts.get(key) if key in ARTEFACT_OF.values() else None
    if stored is None and key.startswith("files/"):
        stored = (artefacts.get("files") or {}).get(key.removeprefix("files/"))
    if not isinstance(stored, str):
        raise SchedulerError(f"the run stored no {key}")
    if not stored.startswith(f"{store.root}/{folder}/"):
        raise SchedulerError(f"the run's {key} is not in its folder of its store: {stored}")
    if store.is_local and Path(stored).is_file():
        return Path(stored).read_bytes()
    link = (artefacts.get("links") or {}).get(key)
    try:
        if link:
            return api.request("GET", link).content
        return bytes(store.get_bytes(stored.removeprefix(f"{store.root}/")))
    except (APIError, ArtefactStoreError) as error:
        raise SchedulerError(f"the run's {key} could not be read from its store: {error}") from None


def run_folder(run: dict[str, Any]) -> tuple[Any, str]:
    """The run's store (its ``store`` parameter, or the default) and its folder's key
    there, from the run's id: never from what its ``result.json`` says.

    Raises:
        ArtefactStoreError: The store cannot be opened.
    """
    from notebook_jobs.blocks.store import open_store  # Prefect's blocks: only here
    from notebook_jobs.tasks.engine.layout import run_prefix

    store = open_store((run.get("parameters") or {}).get("store"))
    return store, run_prefix(RUN_FLOW, str(run["id"]))


def delete_stored(run: dict[str, Any]) -> int:
    """Delete a run's folder (every attempt's) from its store; how many files went.

    Raises:
        ArtefactStoreError: The store cannot be opened or the folder deleted.
    """
    store, folder = run_folder(run)
    return int(store.delete_folder(folder))


class StoredJobFiles(JobFilesManager):  # type: ignore[misc]
    """``download_files``: the run's executed notebook, HTML, input and written files."""

    async def copy_from_staging(self, job_id: str, redownload: Any = False) -> None:
        # the handler passes the query argument as it came: "false" is a string
        again = str(redownload).lower() in ("true", "1")
        await asyncio.to_thread(self._copy, job_id, again)

    def _copy(self, job_id: str, redownload: bool) -> None:
        scheduler = self.scheduler
        job = scheduler.get_job_blocking(job_id, job_files=False)
        names = scheduler.get_job_filenames(job)
        folder = Path(scheduler.get_local_output_path(job))
        with scheduler.connection().client() as api:
            try:
                artefacts = api.result(job_id).get("artefacts") or {}
            except LookupError:
                raise SchedulerError(
                    f"job {job_id} has no stored outputs yet (it is {job.status.value.lower()})"
                ) from None
            try:
                place = run_folder(api.flow_run(job_id))
            except ArtefactStoreError as error:
                raise SchedulerError(str(error)) from None
            wanted = [(names[f], ARTEFACT_OF[f]) for f in [*job.output_formats, "input"]]
            wanted += [(f"files/{name}", f"files/{name}") for name in artefacts.get("files") or {}]
            targets = [(inside(folder, name), key) for name, key in wanted]  # all, first
            folder.mkdir(parents=True, exist_ok=True)
            for target, key in targets:
                if target.exists() and not redownload:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(artefact_bytes(api, place, artefacts, key))
