"""The ``diff-runs`` flow: what changed between two runs, as a Markdown artifact.

A run is named by its flow run id (its ``result.json`` is found through its result
link artifact) or by the path or URI of a ``result.json``. ``nbjobs diff`` prints the
same comparison (``--json`` for the document itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import nbformat
from nbformat import NotebookNode
from prefect import flow, get_client
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)

from notebook_jobs.blocks.exceptions import NotebookNotFoundError
from notebook_jobs.blocks.s3 import read_s3_object
from notebook_jobs.flows.run_labels import (
    COMMON_TAG,
    ID_CHARS,
    MAX_NAME_CHARS,
    name_this_run,
    notebook_label,
)
from notebook_jobs.tasks.engine.compare import compare_runs, comparison_markdown
from notebook_jobs.tasks.models import summary_links
from notebook_jobs.tasks.notebook import artifact_key
from notebook_jobs.tasks.ui_links import run_url

MAX_FILES_COMPARED = 200  # checksums read per run; a run that wrote more is compared in part
_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def read_location(location: str) -> bytes:
    """The bytes at a local path, a ``file://`` or ``http(s)://`` link, or an ``s3://`` URI."""
    if location.startswith(("http://", "https://")):
        answer = httpx.get(location, timeout=60, follow_redirects=True)
        answer.raise_for_status()
        return answer.content
    if location.startswith("s3://"):
        return read_s3_object(location)
    return Path(location.removeprefix("file://")).read_bytes()


async def result_of_run(run_id: str) -> dict[str, Any]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    summaries = [a.data for a in found if a.key and a.key.endswith("-summary") and a.data]
    links = [url for text in summaries if (url := summary_links(str(text)).get("result"))]
    if not links:
        raise NotebookNotFoundError(
            f"flow run {run_id} has no result: has it finished?", source=run_id
        )
    document: dict[str, Any] = json.loads(await asyncio.to_thread(read_location, links[0]))
    return document


async def load_run(ref: str) -> tuple[dict[str, Any], NotebookNode | None, dict[str, str]]:
    """A run's result document, its executed notebook and its files' checksums.

    Raises:
        NotebookNotFoundError: No such run or file.
    """
    try:
        if _RUN_ID.match(ref.strip().lower()):
            UUID(ref)
            result = await result_of_run(ref.strip().lower())
        else:
            result = json.loads(await asyncio.to_thread(read_location, ref))
    except (OSError, ValueError, httpx.HTTPError) as error:
        raise NotebookNotFoundError(f"cannot read the run {ref!r}: {error}", source=ref) from error
    artefacts = result.get("artefacts") or {}
    notebook = None
    where = (artefacts.get("links") or {}).get("notebook") or artefacts.get("notebook")
    if where:
        try:
            data = await asyncio.to_thread(read_location, where)
            notebook = nbformat.reads(data.decode(), as_version=4)
        except Exception:  # compared without text outputs, and says so
            notebook = None
    checksums: dict[str, str] = {}
    for name, uri in list((artefacts.get("files") or {}).items())[:MAX_FILES_COMPARED]:
        try:
            data = await asyncio.to_thread(read_location, uri)
        except Exception:
            continue
        checksums[name] = hashlib.sha256(data).hexdigest()
    return result, notebook, checksums


async def compare(run_a: str, run_b: str) -> dict[str, Any]:
    """The comparison of two runs (``tasks.engine.compare.compare_runs``)."""
    (a, nb_a, files_a), (b, nb_b, files_b) = await asyncio.gather(load_run(run_a), load_run(run_b))
    return compare_runs(a, b, notebooks=(nb_a, nb_b), files=(files_a, files_b))


async def _run_names(refs: tuple[str, str]) -> tuple[str, str]:
    """The two runs' names (a ``result.json`` path is named by its file)."""
    names = list(refs)
    ids = [ref.strip().lower() for ref in refs if _RUN_ID.match(ref.strip().lower())]
    if ids:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
            )
        by_id = {str(run.id): run.name for run in runs}
        names = [by_id.get(ref.strip().lower(), ref) for ref in refs]
    return names[0], names[1]


def diff_key(notebook: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    """``report-diff-9c3f2a-1b07de``: one artifact per pair of runs, by their ids' ends."""
    ends = "-".join(str(run.get("flow_run_id") or "")[-ID_CHARS:] for run in (a, b))
    return artifact_key(notebook, f"diff-{ends}".lower())


@flow(name="diff-runs", log_prints=True)
async def run_diff(run_a: str, run_b: str) -> dict[str, Any]:
    """Compare two runs and publish the comparison as a Markdown artifact,
    ``<notebook>-diff-<a>-<b>``, titled by the two runs' names with links to them.

    Args:
        run_a: A flow run id, or the path or URI of a ``result.json``.
        run_b: The same, for the run to compare with.

    Example:
        >>> found = await run_diff("3f2a...", "9c01...")
        >>> found["outputs"]
        [{'name': 'total', 'a': 30, 'b': 55, 'change': 'changed', 'delta': 25}]
    """
    found: dict[str, Any]
    found, names = await asyncio.gather(compare(run_a, run_b), _run_names((run_a, run_b)))
    a, b = found["a"], found["b"]
    notebook = str(a.get("notebook") or b.get("notebook") or "notebook")
    links = (
        run_url(str(a["flow_run_id"])) if a.get("flow_run_id") else None,
        run_url(str(b["flow_run_id"])) if b.get("flow_run_id") else None,
    )
    await acreate_markdown_artifact(
        comparison_markdown(found, names, links),
        key=diff_key(notebook, a, b),
        description=f"{names[0]} against {names[1]}",
    )
    await name_this_run(
        f"diff {names[0]} → {names[1]}"[:MAX_NAME_CHARS],
        [COMMON_TAG, f"notebook:{notebook_label(notebook)}", "trigger:diff"],
    )
    return found
