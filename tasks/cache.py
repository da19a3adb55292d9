"""Runs that are not repeated when nothing changed: cache records in the artefact store.

The records are Prefect's own: a ``ResultStore`` (the machinery behind task caching)
over the run's artefact store, one record per key at ``cache/<key>``, written with
Prefect's expiration and read back only while it holds. A record points to the run
that made it (its id and its ``result.json``), so a hit returns that run's result and
links to its artefacts without executing anything. Only completed runs are recorded;
a record whose run's artefacts are gone is a miss. The store is shared by every
worker that writes to it (S3 for several machines), so is the cache.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect.results import ResultStore
from prefect.serializers import JSONSerializer

from notebook_jobs.blocks.exceptions import ArtefactStoreError
from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.blocks.store import ArtefactStore
from notebook_jobs.tasks.engine.cache_key import (
    cache_key,
    code_sources,
    environment_fingerprint,
    input_checksums,
)
from notebook_jobs.tasks.engine.layout import RESULT_NAME
from notebook_jobs.tasks.engine.staged import StagedNotebook
from notebook_jobs.tasks.models import CacheInfo, NotebookRequest, NotebookResult

CACHE_FOLDER = "cache"


def key_of(request: NotebookRequest, staged: StagedNotebook) -> CacheInfo:
    """The run's cache key, from its staged notebook and inputs (blocking: a thread).

    Returns:
        The key and the environment fingerprint in it; not a hit (yet).
    """
    code = [
        cell.source
        for cell, origin in zip(staged.notebook.cells, staged.cell_origin, strict=True)
        if origin is not None and cell.cell_type == "code"
    ]
    # the cells that run (a tag's cells may change) and where (a folder the code reads)
    fingerprint = environment_fingerprint(request.cache_fingerprint, staged.origin)
    key = cache_key(
        code=code or code_sources(staged.notebook),
        parameters=staged.parameters,  # secrets by reference
        kernel=staged.kernel,
        inputs=input_checksums(staged.workdir, staged.input_names),
        fingerprint=fingerprint,
        options={
            "cells": sorted(staged.selected) if staged.selected is not None else None,
            "cwd": str(staged.cwd) if staged.cwd else None,
            "language": request.language,
            "report_mode": request.report_mode,
        },
    )
    return CacheInfo(key=key, hit=False, fingerprint=fingerprint)


def _records(store: ArtefactStore) -> ResultStore:
    return ResultStore(
        result_storage=store.filesystem, serializer=JSONSerializer(), cache_result_in_memory=False
    )


def _record_key(key: str) -> str:
    return safe_key(CACHE_FOLDER, key)


async def find_cached(
    store: ArtefactStore, info: CacheInfo, max_age_seconds: float | None = None
) -> NotebookResult | None:
    """The result of the completed run cached under ``info.key``, if it holds and exists.

    Args:
        store: The artefact store the records are kept in.
        info: The run's cache key.
        max_age_seconds: This caller's expiration: an older record is a miss even when
            the run that wrote it set none (or a longer one).

    Returns:
        The cached run's result with ``cache`` set, or ``None`` for a miss.
    """
    records = _records(store)
    record_key = _record_key(info.key)
    if not await records.aexists(record_key):  # absent, or expired
        return None
    record = await records.aread(record_key)
    pointer: dict[str, Any] = record.result
    recorded = datetime.fromisoformat(str(pointer.get("recorded_at")))
    if max_age_seconds and datetime.now(timezone.utc) - recorded > timedelta(
        seconds=max_age_seconds
    ):
        return None
    try:
        data = await asyncio.to_thread(store.get_bytes, pointer["result"])
    except ArtefactStoreError:  # the cached run's artefacts were removed
        return None
    found = NotebookResult.model_validate_json(data)
    expiration = record.metadata.expiration
    found.cache = info.model_copy(
        update={
            "hit": True,
            "expires_at": datetime.fromisoformat(str(expiration)) if expiration else None,
        }
    )
    return found


async def remember_run(
    store: ArtefactStore, info: CacheInfo, result: NotebookResult, prefix: str
) -> None:
    """Record a completed run under its key (with ``info.expires_at``, if any).

    Args:
        store: The artefact store the run was stored in.
        info: Its cache key and expiry.
        result: The completed run's result.
        prefix: Where its artefacts are in the store.
    """
    pointer = {
        "flow_run_id": result.flow_run_id,
        "result": safe_key(prefix, RESULT_NAME),
        "notebook": result.notebook,
        "recorded_at": datetime.now(timezone.utc).isoformat(),
    }
    expiration: Any = info.expires_at  # Prefect's DateTime type; a datetime is what it keeps
    await _records(store).awrite(obj=pointer, key=_record_key(info.key), expiration=expiration)


def relinked(result: NotebookResult, store: ArtefactStore) -> NotebookResult:
    """``result`` with fresh links to its artefacts (presigned S3 links expire)."""
    artefacts = result.artefacts.model_copy(deep=True)
    root = store.root + "/"
    for kind in list(artefacts.links):
        if kind.startswith("files/"):
            uri = artefacts.files.get(kind.removeprefix("files/"))
        else:
            uri = getattr(artefacts, kind, None)
        if isinstance(uri, str) and uri.startswith(root):
            artefacts.links[kind] = store.link(uri.removeprefix(root))
    for display in artefacts.displays:
        if display.uri.startswith(root):
            display.link = store.link(display.uri.removeprefix(root))
    return result.model_copy(update={"artefacts": artefacts})


def expiry(seconds: float | None) -> datetime | None:
    """When a record made now expires, for ``cache_expiration_seconds``."""
    return datetime.now(timezone.utc) + timedelta(seconds=seconds) if seconds else None


__all__ = ["expiry", "find_cached", "key_of", "relinked", "remember_run"]
