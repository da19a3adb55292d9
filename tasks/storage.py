"""Store a run's artefacts and publish what the Prefect UI shows of it.

Uploads happen on every outcome, failures included: the partial notebook is the
first thing a user looks at when a nightly run broke.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from notebook_jobs.blocks.exceptions import ArtefactStoreError
from notebook_jobs.blocks.store import ArtefactStore, safe_key
from notebook_jobs.tasks.engine.layout import (
    FILES_FOLDER,
    MAIN_ARTEFACTS,
    RESULT_NAME,
    SPILL_MANIFEST,
    spill_root,
)
from notebook_jobs.tasks.models import Artefacts, NotebookResult
from notebook_jobs.tasks.notebook import render_html

UPLOAD_THREADS = 8


def upload_run_folder(
    store: ArtefactStore,
    run_dir: Path,
    prefix: str,
    files: list[str],
    workdir: Path,
    logs: dict[str, Path] | None = None,
) -> Artefacts:
    """Upload the run folder's notebooks, the files the notebook wrote, and job logs.

    ``logs`` maps artefact names (``slurm/slurm-12.out``) to local files.

    Returns:
        Their URIs, plus links (presigned for S3) to the notebook, HTML and result.
    """
    jobs: list[tuple[str, str, Path]] = []
    for field, name in MAIN_ARTEFACTS.items():
        if (run_dir / name).exists():
            jobs.append((field, safe_key(prefix, name), run_dir / name))
    for relative in files:
        source = workdir / relative
        if source.is_file():
            jobs.append((f"files:{relative}", safe_key(prefix, FILES_FOLDER, relative), source))
    for name, source in (logs or {}).items():
        if source.is_file():
            jobs.append((f"logs:{name}", safe_key(prefix, name), source))
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        uris = list(pool.map(lambda job: store.put_file(job[1], job[2]), jobs))
    result_key = safe_key(prefix, RESULT_NAME)
    return artefacts_from(
        [(field, key, uri) for (field, key, _), uri in zip(jobs, uris, strict=True)],
        prefix=store.uri(prefix),
        result=(store.uri(result_key), store.link(result_key)),
        link=store.link,
    )


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
        if what.startswith("files:"):
            artefacts.files[what.removeprefix("files:")] = uri
        elif what.startswith("logs:"):
            artefacts.logs[what.removeprefix("logs:")] = uri
        else:
            setattr(artefacts, what, uri)
            artefacts.links[what] = link(key)
    artefacts.links["result"] = result[1]
    return artefacts


class SpillManifest(BaseModel):
    """``spill.json``: where a spilled run's artefacts go once the store answers."""

    store: str
    prefix: str
    files: list[str]
    workdir: str
    logs: dict[str, str]
    reason: str


@task(name="store-artefacts", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def store_artefacts(
    store: ArtefactStore,
    run_dir: Path,
    prefix: str,
    files: list[str],
    workdir: Path,
    logs: dict[str, Path] | None = None,
) -> Artefacts:
    """Render the executed notebook as HTML, then upload the run folder's artefacts.

    The input, the executed notebook, its HTML, the files the notebook wrote and any
    job logs. A rendering error is logged, not fatal: the notebook itself is stored.

    Example:
        >>> artefacts = await store_artefacts(open_store("s3://runs"), run_dir, prefix, [], work)
        >>> artefacts.notebook
        's3://runs/run-notebook/0b6f.../notebook.ipynb'
    """
    logger = get_run_logger()
    try:
        await asyncio.to_thread(render_html, run_dir)
    except Exception as error:  # a broken rendering must not lose the run
        logger.warning("could not render HTML: %s: %s", type(error).__name__, error)
    artefacts = await asyncio.to_thread(
        upload_run_folder, store, run_dir, prefix, files, workdir, logs
    )
    logger.info("stored artefacts under %s", artefacts.prefix)
    return artefacts


def result_document(result: NotebookResult) -> bytes:
    """``result.json``: the result model as indented JSON."""
    return json.dumps(result.model_dump(mode="json"), indent=2).encode()


def summary_markdown(result: NotebookResult) -> str:
    """The run summary shown in the Prefect UI: status, error, cells, outputs, links."""
    lines = [f"# {result.notebook}: {result.status}", ""]
    if result.error:
        where = f" in cell {result.error.cell_index}" if result.error.cell_index is not None else ""
        lines += [f"**{result.error.name}**{where}: {result.error.message}", ""]
        if result.error.traceback:
            lines += ["```", result.error.traceback[-3000:], "```", ""]
    timings = result.timings
    lines += [
        f"Kernel `{result.kernel}`, {timings.total_seconds:.2f} s in all "
        f"({timings.execute_seconds:.2f} s executing).",
        "",
    ]
    if result.parameters:
        lines += ["| parameter | value |", "|---|---|"]
        lines += [f"| {k} | `{json.dumps(v)[:200]}` |" for k, v in result.parameters.items()]
        lines.append("")
    lines += ["| cell | status | seconds |", "|---:|---|---:|"]
    for cell in result.cells:
        seconds = f"{cell.duration_seconds:.3f}" if cell.duration_seconds is not None else ""
        lines.append(f"| {cell.index} | {cell.status} | {seconds} |")
    lines.append("")
    for name, link in result.artefacts.links.items():
        lines.append(f"- [{name}]({link})")
    for note in result.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines)


def outputs_table(outputs: dict[str, Any]) -> list[dict[str, str]]:
    """The notebook's reported values as table rows (values as JSON text)."""
    return [{"name": k, "value": json.dumps(v)[:1000]} for k, v in outputs.items()]


ResultListener = Callable[[NotebookResult], None]
_result_listeners: list[ResultListener] = []


def add_result_listener(listener: ResultListener) -> None:
    """Call ``listener`` with each run's result once ``result.json`` is stored, before the
    Prefect artifacts are published (the local worker hands it to ``nbjobs run`` then)."""
    _result_listeners.append(listener)


def remove_result_listener(listener: ResultListener) -> None:
    """Stop calling ``listener``."""
    if listener in _result_listeners:
        _result_listeners.remove(listener)


async def _write_result(result: NotebookResult, store: ArtefactStore, prefix: str) -> None:
    await asyncio.to_thread(store.put_bytes, safe_key(prefix, RESULT_NAME), result_document(result))


async def store_result(result: NotebookResult, store: ArtefactStore, prefix: str) -> bool:
    """Write ``result.json`` and tell the result listeners, before any Prefect artifact.

    Returns:
        False when the write failed; ``publish_result`` then writes it again, with
        its retries.
    """
    try:
        await _write_result(result, store, prefix)
    except ArtefactStoreError:
        return False
    for listener in list(_result_listeners):
        listener(result)
    return True


@task(name="publish-result", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def publish_result(
    result: NotebookResult,
    key_of: dict[str, str],
    store: ArtefactStore | None = None,
    prefix: str | None = None,
) -> None:
    """Write ``result.json`` to the store, then publish what the Prefect UI shows.

    The Prefect artifacts: the summary, links to the stored notebook, HTML and result,
    and the notebook's outputs as a table.

    Args:
        result: The run's result.
        key_of: Artifact keys by kind (``summary``, ``notebook``, ``html``, ``result``,
            ``outputs``), stable per notebook so the UI keeps each notebook's history.
        store: Where ``result.json`` goes (None: it was written elsewhere, e.g. spilled).
        prefix: The run's key prefix in ``store``.
    """
    if store is not None and prefix is not None:
        await _write_result(result, store, prefix)
    # One after the other: on Prefect's SQLite server, five concurrent creations took
    # 141 ms against 100 ms in sequence (writes queue for the database lock).
    await acreate_markdown_artifact(
        summary_markdown(result),
        key=key_of["summary"],
        description=f"{result.notebook} run summary",
    )
    for kind in ("notebook", "html", "result"):
        link = result.artefacts.links.get(kind)
        if link:
            await acreate_link_artifact(
                link,
                link_text=f"{result.notebook}: {kind}",
                key=key_of[kind],
                description=f"The run's {kind} in the artefact store",
            )
    if result.outputs:
        await acreate_table_artifact(
            outputs_table(result.outputs),
            key=key_of["outputs"],
            description=f"Values {result.notebook} reported",
        )


def spill_run(
    run_dir: Path,
    *,
    store_spec: str,
    prefix: str,
    files: list[str],
    workdir_name: str,
    logs: dict[str, Path],
    reason: str,
) -> tuple[Path, Artefacts]:
    """Keep a run's artefacts in the local spill folder until ``nbjobs retry-uploads``.

    Returns:
        The spill folder and the artefacts' local locations (for the result).
    """
    import shutil

    target = spill_root() / prefix.replace("/", "__")
    target.parent.mkdir(parents=True, exist_ok=True)
    if run_dir.resolve() != target.resolve():
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(run_dir), str(target))
    kept_logs: dict[str, str] = {}
    for name, path in logs.items():
        if path.is_file():
            copy = target / "logs" / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
            kept_logs[name] = str(copy)
    manifest = SpillManifest(
        store=store_spec,
        prefix=prefix,
        files=files,
        workdir=workdir_name,
        logs=kept_logs,
        reason=reason,
    )
    (target / SPILL_MANIFEST).write_text(manifest.model_dump_json(indent=2))
    located = [
        (what, str(target / name), str(target / name))
        for what, name in MAIN_ARTEFACTS.items()
        if (target / name).exists()
    ]
    located += [(f"files:{f}", "", str(target / workdir_name / f)) for f in files]
    located += [(f"logs:{name}", "", path) for name, path in kept_logs.items()]
    result = target / RESULT_NAME
    artefacts = artefacts_from(
        located,
        prefix=str(target),
        result=(str(result), result.as_uri()),
        link=lambda path: Path(path).as_uri(),
    )
    return target, artefacts


def retry_spilled_uploads() -> list[tuple[Path, str | None]]:
    """Upload every spilled run to its store; return each folder and its error (or None).

    A run that uploads is removed from the spill folder, and its ``result.json`` in the
    store names the store's locations.
    """
    import shutil

    from notebook_jobs.blocks.store import open_store

    outcomes: list[tuple[Path, str | None]] = []
    root = spill_root()
    for folder in sorted(root.glob("*")) if root.exists() else []:
        manifest_path = folder / SPILL_MANIFEST
        if not manifest_path.exists():
            continue
        try:
            manifest = SpillManifest.model_validate_json(manifest_path.read_text())
            store = open_store(manifest.store)
            logs = {name: Path(path) for name, path in manifest.logs.items()}
            artefacts = upload_run_folder(
                store, folder, manifest.prefix, manifest.files, folder / manifest.workdir, logs
            )
            spilled = NotebookResult.model_validate_json((folder / RESULT_NAME).read_text())
            notes = [note for note in spilled.notes if "spill" not in note]
            result = spilled.model_copy(
                update={
                    "artefacts": artefacts,
                    "notes": [*notes, "artefacts uploaded later by nbjobs retry-uploads"],
                }
            )
            store.put_bytes(safe_key(manifest.prefix, RESULT_NAME), result_document(result))
        except Exception as error:  # keep it spilled; report and go on with the others
            outcomes.append((folder, f"{type(error).__name__}: {error}"))
            continue
        shutil.rmtree(folder, ignore_errors=True)
        outcomes.append((folder, None))
    return outcomes
