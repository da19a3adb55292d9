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
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from notebook_jobs.blocks.exceptions import NotebookNotFoundError
from notebook_jobs.blocks.store import read_s3_object
from notebook_jobs.tasks.engine.compare import compare_runs, comparison_markdown
from notebook_jobs.tasks.models import summary_links

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


async def _result_of_run(run_id: str) -> dict[str, Any]:
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
            result = await _result_of_run(ref.strip().lower())
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


@flow(name="diff-runs", log_prints=True)
async def run_diff(run_a: str, run_b: str) -> dict[str, Any]:
    """Compare two runs and publish the comparison as a Markdown artifact (``diff``).

    Args:
        run_a: A flow run id, or the path or URI of a ``result.json``.
        run_b: The same, for the run to compare with.

    Example:
        >>> found = await run_diff("3f2a...", "9c01...")
        >>> found["outputs"]
        [{'name': 'total', 'a': 30, 'b': 55, 'change': 'changed', 'delta': 25}]
    """
    found = await compare(run_a, run_b)
    await acreate_markdown_artifact(
        comparison_markdown(found), key="diff", description=f"{run_a} against {run_b}"
    )
    return found
