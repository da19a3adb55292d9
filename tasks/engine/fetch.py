"""Reading what a run needs: its notebook and its input files, from a path, a URL or S3.

``fetch_notebook_source`` is the one place that reads a notebook, and
``parse_notebook`` the one that turns its bytes into a notebook document. Everything
here raises a ``NotebookInputError`` subclass with a message that says what to fix.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nbformat
from nbformat import NotebookNode

from notebook_jobs.blocks.exceptions import (
    NotebookFormatError,
    NotebookNotFoundError,
    RequestTooLargeError,
    WorkingFolderError,
)
from notebook_jobs.blocks.retry import retry_busy
from notebook_jobs.blocks.s3 import read_s3_object
from notebook_jobs.blocks.settings import settings

HTTP_FETCH_TIMEOUT_SECONDS = 30.0
HTTP_FETCH_ATTEMPTS = 5
HTTP_BACKOFF_SECONDS = 0.5


@dataclass
class NotebookSource:
    """A notebook's raw bytes and where they came from."""

    name: str
    data: bytes
    origin: str = field(default="inline")


def notebook_name(origin: str) -> str:
    """A short display name for a notebook, from its path or URL ('report.ipynb')."""
    tail = origin.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return tail or "notebook.ipynb"


def display_name(notebook: str | dict[str, Any], name: str | None = None) -> str:
    """The one name of a run's notebook (``report.ipynb``), everywhere it is shown.

    ``name`` if given; else the file name of a path or URL; else, for a notebook sent
    inline, its metadata's ``name`` or ``title``; else ``notebook.ipynb``.

    Example:
        >>> display_name({"cells": [], "metadata": {"name": "Weekly sales"}})
        'Weekly-sales.ipynb'
    """
    if not name:
        document: Any = notebook
        if isinstance(notebook, str):
            if not notebook.lstrip().startswith("{"):
                return notebook_name(notebook.strip())
            try:
                document = json.loads(notebook)
            except ValueError:
                document = {}
        metadata = document.get("metadata") if isinstance(document, dict) else None
        if isinstance(metadata, dict):
            found = metadata.get("name") or metadata.get("title")
            name = found if isinstance(found, str) else None
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", (name or "").strip()).strip("-.")[:80]
    stem = stem.removesuffix(".ipynb") or "notebook"
    return f"{stem}.ipynb"


def _within_limit(what: str, size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise RequestTooLargeError(what, size, limit)


def _get_limited(url: str, limit: int | None) -> httpx.Response:
    """GET ``url``, reading no more than ``limit`` bytes of its body (None: no limit)."""
    what = f"the notebook at {url}"
    with httpx.stream("GET", url, follow_redirects=True, timeout=HTTP_FETCH_TIMEOUT_SECONDS) as r:
        body = bytearray()
        if r.status_code < 400:
            _within_limit(what, int(r.headers.get("content-length") or 0), limit)
            for chunk in r.iter_bytes():
                body += chunk
                _within_limit(what, len(body), limit)
        return httpx.Response(r.status_code, content=bytes(body), request=r.request)


def _get_with_retries(url: str, limit: int | None = None) -> httpx.Response:
    """GET ``url``, retrying 503 and 429 (a busy server) with exponential backoff."""
    response = retry_busy(
        lambda: _get_limited(url, limit),
        lambda response: response.status_code,
        attempts=HTTP_FETCH_ATTEMPTS,
        backoff_seconds=HTTP_BACKOFF_SECONDS,
    )
    response.raise_for_status()
    return response


def fetch_notebook_source(notebook: str | dict[str, Any]) -> NotebookSource:
    """Read the notebook named by ``notebook``: JSON itself, a path, a URL or an S3 URI.

    Args:
        notebook: The ``notebook`` field of a request.

    Returns:
        The notebook's bytes and a display name.

    Raises:
        NotebookNotFoundError: The file, URL or object cannot be read.
        NotebookFormatError: ``notebook`` is neither a notebook nor a location.
        RequestTooLargeError: It is over ``$NBJOBS_MAX_NOTEBOOK_BYTES`` (read no further).
    """
    limit = settings().max_notebook_bytes
    if isinstance(notebook, dict):
        data = json.dumps(notebook).encode()
        _within_limit("the notebook sent in the request", len(data), limit)
        return NotebookSource(display_name(notebook), data, "inline")
    text = notebook.strip()
    if text.startswith("{"):
        _within_limit("the notebook sent in the request", len(text.encode()), limit)
        return NotebookSource(display_name(text), text.encode(), "inline")
    if text.startswith(("http://", "https://")):
        try:
            response = _get_with_retries(text, limit)
        except httpx.HTTPError as error:
            raise NotebookNotFoundError(
                f"could not fetch notebook {text}: {type(error).__name__}: {error}", source=text
            ) from error
        return NotebookSource(notebook_name(text), response.content, text)
    if text.startswith("s3://"):
        try:
            data = read_s3_object(text, max_bytes=limit)
        except RequestTooLargeError:
            raise
        except Exception as error:
            raise NotebookNotFoundError(
                f"could not read notebook {text}: {type(error).__name__}: {error}", source=text
            ) from error
        return NotebookSource(notebook_name(text), data, text)
    if "://" in text:
        raise NotebookNotFoundError(
            f"unsupported notebook location {text!r}: give a path, an http(s):// URL, "
            "an s3:// URI or the notebook JSON",
            source=text,
        )
    path = Path(text).expanduser()
    try:
        _within_limit(f"the notebook {path}", path.stat().st_size, limit)
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise NotebookNotFoundError(
            f"notebook not found: {path} (working folder {Path.cwd()})", source=text
        ) from error
    except OSError as error:
        raise NotebookNotFoundError(
            f"could not read notebook {path}: {error.strerror}", source=text
        ) from error
    return NotebookSource(path.name, data, str(path.resolve()))


def parse_notebook(source: NotebookSource) -> NotebookNode:
    """Parse and validate notebook bytes, upgrading older nbformat versions to v4.

    Raises:
        NotebookFormatError: Not UTF-8 JSON, not a notebook, or an invalid notebook.
    """
    try:
        document = json.loads(source.data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise NotebookFormatError(
            f"{source.name} is not UTF-8 text (byte {error.start}); is it a notebook?",
            source=source.origin,
        ) from error
    except json.JSONDecodeError as error:
        raise NotebookFormatError(
            f"{source.name} is not valid JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno}; the file may be truncated or not a notebook",
            source=source.origin,
        ) from error
    if not isinstance(document, dict) or ("cells" not in document and "worksheets" not in document):
        raise NotebookFormatError(
            f"{source.name} is JSON but not a Jupyter notebook (no 'cells'); "
            "send the .ipynb document itself",
            source=source.origin,
        )
    try:
        nb = nbformat.reads(json.dumps(document), as_version=4)
        # to nbformat 4.5, as papermill loads every notebook: cells get ids, which the
        # injected cell has too; in a 4.0-4.4 notebook that id would make it invalid
        nb = nbformat.v4.upgrade(nb)
        nbformat.validate(nb)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise NotebookFormatError(
            f"{source.name} is not a valid notebook: {type(error).__name__}: {first_line}",
            source=source.origin,
        ) from error
    for cell in nb.cells:
        # papermill's helpers expect every cell to carry a tags list
        cell.metadata.setdefault("tags", [])
    notebook: NotebookNode = nb
    return notebook


def stage_input_files(items: list[str], workdir: Path, *, replace: bool = True) -> list[str]:
    """Copy input files into the notebook's working folder, by their base names.

    Args:
        items: Local files or folders, ``s3://`` URIs or ``http(s)://`` URLs.
        workdir: The notebook's working folder.
        replace: Whether an existing file of the same name may be replaced; not in a
            folder of the user's own (``cwd``), where it would be lost.

    Returns:
        The names they have in ``workdir``.

    Raises:
        NotebookNotFoundError: An input cannot be read.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for item in items:
        name = notebook_name(item)
        if not name or name in (".", ".."):
            raise NotebookNotFoundError(f"input file {item!r} has no usable name", source=item)
        target = workdir / name
        if not replace and target.exists():
            raise WorkingFolderError(
                f"input file {item!r} would replace {target} in the working folder; "
                "leave it out (the notebook reads the one there) or rename one of them",
                path=str(workdir),
            )
        if item.startswith(("http://", "https://")):
            try:
                target.write_bytes(_get_with_retries(item).content)
            except httpx.HTTPError as error:
                raise NotebookNotFoundError(
                    f"could not fetch input file {item}: {error}", source=item
                ) from error
        elif item.startswith("s3://"):
            try:
                target.write_bytes(read_s3_object(item))
            except Exception as error:
                raise NotebookNotFoundError(
                    f"could not read input file {item}: {type(error).__name__}: {error}",
                    source=item,
                ) from error
        else:
            source = Path(item).expanduser()
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            elif source.is_file():
                shutil.copy2(source, target)
            else:
                raise NotebookNotFoundError(f"input file not found: {source}", source=item)
        names.append(name)
    return names
