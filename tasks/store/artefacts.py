"""Store a run's artefacts: the notebooks, the files it wrote, job logs and ``result.json``.

Uploads happen on every outcome, failures included: the partial notebook is the
first thing a user looks at when a nightly run broke.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import nbformat
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from notebook_jobs.blocks.exceptions import ArtefactStoreError
from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.blocks.store import ArtefactStore
from notebook_jobs.tasks.engine.layout import (
    DISPLAYS_FOLDER,
    EXECUTED_NAME,
    FILES_FOLDER,
    MAIN_ARTEFACTS,
    RESULT_NAME,
    WORK_FOLDER,
)
from notebook_jobs.tasks.engine.outputs import display_of, write_displays
from notebook_jobs.tasks.engine.secrets import RunSecrets
from notebook_jobs.tasks.models import (
    MAX_LINKED_FILES,
    Artefacts,
    DisplayOutput,
    NotebookResult,
)
from notebook_jobs.tasks.notebook import render_html
from notebook_jobs.tasks.runtime import current_runtime

UPLOAD_THREADS = 8


@dataclass(frozen=True)
class RunFolder:
    """A run's folder on local disk, and where its artefacts go in a store.

    What ``store_artefacts`` uploads, what ``spill_run`` keeps when the store does not
    answer and ``nbjobs retry-uploads`` uploads later: one value instead of the five
    arguments each of them took.

    Attributes:
        path: The folder: the input and executed notebooks, their HTML, ``outputs/``
            (the cells' rich outputs) and the files the notebook wrote.
        prefix: The run's prefix in the store (``run-notebook/<flow run id>``).
        files: The files the notebook wrote, relative to ``workdir``.
        workdir_name: The folder inside ``path`` that holds them.
        logs: Job logs kept beside it: artefact name (``slurm/slurm-12.out``) to file.

    Example:
        >>> folder = RunFolder(Path("/tmp/run"), "run-notebook/0b6f", files=("out.csv",))
        >>> folder.workdir, folder.moved_to(Path("/spill/x")).workdir
        (PosixPath('/tmp/run/work'), PosixPath('/spill/x/work'))
    """

    path: Path
    prefix: str
    files: tuple[str, ...] = ()
    workdir_name: str = WORK_FOLDER
    logs: Mapping[str, Path] = field(default_factory=dict)

    @property
    def workdir(self) -> Path:
        """Where the files the notebook wrote are."""
        return self.path / self.workdir_name

    def moved_to(self, path: Path) -> RunFolder:
        """The same run's folder, moved to ``path`` (its logs stay where they are)."""
        return replace(self, path=path)


def upload_run_folder(store: ArtefactStore, folder: RunFolder) -> Artefacts:
    """Upload the run folder's notebooks, the files the notebook wrote, and job logs.

    Returns:
        Their URIs, plus links (presigned for S3) to the notebook, HTML and result.
    """
    run_dir, prefix = folder.path, folder.prefix
    jobs: list[tuple[str, str, Path]] = []
    for what, name in MAIN_ARTEFACTS.items():
        if (run_dir / name).exists():
            jobs.append((what, safe_key(prefix, name), run_dir / name))
    for relative in folder.files:
        source = folder.workdir / relative
        if source.is_file():
            jobs.append((f"files:{relative}", safe_key(prefix, FILES_FOLDER, relative), source))
    for name, source in folder.logs.items():
        if source.is_file():
            jobs.append((f"logs:{name}", safe_key(prefix, name), source))
    for source in display_files(run_dir):
        jobs.append(
            (f"displays:{source.name}", safe_key(prefix, DISPLAYS_FOLDER, source.name), source)
        )
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        uris = list(pool.map(lambda job: store.put_file(job[1], job[2]), jobs))
    result_key = safe_key(prefix, RESULT_NAME)
    located = [(field, key, uri) for (field, key, _), uri in zip(jobs, uris, strict=True)]
    artefacts = artefacts_from(
        located,
        prefix=store.uri(prefix),
        result=(store.uri(result_key), store.link(result_key)),
        link=store.link,
    )
    artefacts.displays = displays_from(run_dir, located, store.link)
    return artefacts


def display_files(run_dir: Path) -> list[Path]:
    """The rich outputs ``store_artefacts`` wrote into the run folder, in name order."""
    folder = run_dir / DISPLAYS_FOLDER
    return sorted(folder.iterdir()) if folder.is_dir() else []


def displays_from(
    run_dir: Path, located: list[tuple[str, str, str]], link: Callable[[str], str]
) -> list[DisplayOutput]:
    """The ``DisplayOutput`` of each stored rich output, in notebook order."""
    displays: list[DisplayOutput] = []
    for what, key, uri in located:
        if not what.startswith("displays:"):
            continue
        name = what.removeprefix("displays:")
        facts = display_of(name, (run_dir / DISPLAYS_FOLDER / name).stat().st_size)
        if facts is not None:
            displays.append(DisplayOutput(**facts, uri=uri, link=link(key)))
    return sorted(displays, key=lambda d: (d.cell, d.output))


def artefacts_from(
    located: list[tuple[str, str, str]],
    *,
    prefix: str,
    result: tuple[str, str],
    link: Callable[[str], str],
) -> Artefacts:
    """The ``Artefacts`` of a run from where each one is, in a store or a spill folder.

    Args:
        located: ``(what, key, uri)``: ``what`` is a main artefact (``notebook``...),
            ``files:<path>`` or ``logs:<name>``.
        prefix: The run's prefix (or folder).
        result: Where ``result.json`` is, and its link.
        link: A browsable link for a key (main artefacts are linked).
    """
    artefacts = Artefacts(prefix=prefix, result=result[0])
    for what, key, uri in located:
        if what.startswith("displays:"):
            continue  # with their facts, by ``displays_from``
        if what.startswith("files:"):
            written = what.removeprefix("files:")
            artefacts.files[written] = uri
            if len(artefacts.files) <= MAX_LINKED_FILES:
                artefacts.links[f"{FILES_FOLDER}/{written}"] = link(key)
        elif what.startswith("logs:"):
            artefacts.logs[what.removeprefix("logs:")] = uri
        else:
            setattr(artefacts, what, uri)
            artefacts.links[what] = link(key)
    artefacts.links["result"] = result[1]
    return artefacts


@task(name="store-artefacts", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def store_artefacts(store: ArtefactStore, folder: RunFolder) -> Artefacts:
    """Render the executed notebook as HTML, then upload the run folder's artefacts.

    The input, the executed notebook, its HTML, the files the notebook wrote and any
    job logs. A rendering error is logged, not fatal: the notebook itself is stored.

    Example:
        >>> folder = RunFolder(run_dir, "run-notebook/0b6f...")
        >>> artefacts = await store_artefacts(open_store("s3://runs"), folder)
        >>> artefacts.notebook
        's3://runs/run-notebook/0b6f.../notebook.ipynb'
    """
    logger = get_run_logger()
    run_dir = folder.path
    try:
        await asyncio.to_thread(render_html, run_dir)
    except Exception as error:  # a broken rendering must not lose the run
        logger.warning("could not render HTML: %s: %s", type(error).__name__, error)
    try:
        await asyncio.to_thread(extract_displays, run_dir)
    except Exception as error:  # nor a broken output: the notebook holds it anyway
        logger.warning(
            "could not store the cells' rich outputs: %s: %s", type(error).__name__, error
        )
    artefacts = await asyncio.to_thread(upload_run_folder, store, folder)
    # where, the summary links: a path on the worker's disk says nothing to a reader
    logger.info(
        "stored the executed notebook, its HTML and %d files the notebook wrote",
        len(folder.files),
    )
    return artefacts


def extract_displays(run_dir: Path) -> list[str]:
    """Write the executed notebook's rich outputs (plots, tables, data) as files of their own."""
    executed = run_dir / EXECUTED_NAME
    if not executed.exists():
        return []
    return write_displays(nbformat.read(executed, as_version=4), run_dir / DISPLAYS_FOLDER)


def result_document(result: NotebookResult) -> bytes:
    """``result.json``: the result model as indented JSON."""
    return json.dumps(result.model_dump(mode="json"), indent=2).encode()


async def write_result(result: NotebookResult, store: ArtefactStore, prefix: str) -> None:
    """Write ``result.json`` under ``prefix`` in ``store``."""
    await asyncio.to_thread(store.put_bytes, safe_key(prefix, RESULT_NAME), result_document(result))


async def store_result(result: NotebookResult, store: ArtefactStore, prefix: str) -> bool:
    """Write ``result.json`` and tell the runtime's result sinks, before any Prefect
    artifact (the local worker hands the result to ``nbjobs run`` then).

    Returns:
        False when the write failed; ``publish_result`` then writes it again, with
        its retries.
    """
    try:
        await write_result(result, store, prefix)
    except ArtefactStoreError:
        return False
    for sink in current_runtime().result_sinks:
        sink(result)
    return True


def copy_files(source: Path, files: list[str], target: Path) -> None:
    """Copy ``files`` (paths relative to ``source``) to the same paths under ``target``."""
    for name in files:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(source / name, destination)
        except FileNotFoundError:  # written, then removed again before the run ended
            continue


def mask_files(secrets: RunSecrets, folder: Path, files: list[str]) -> list[str]:
    """Mask secret values in the text files a run wrote (``folder``, our own copy).

    Returns:
        The files that held a value.
    """
    masked = []
    for name in files:
        path = folder / name
        if path.is_file() and not path.is_symlink() and secrets.mask_file(path):
            masked.append(name)
    return masked


def remove_run_folder(run_dir: Path, logs: list[Path]) -> None:
    """Remove a run's folder, once stored, and its job logs beside it."""
    shutil.rmtree(run_dir, ignore_errors=True)
    for path in logs:
        path.unlink(missing_ok=True)  # the job's zip lies beside its folder
