"""Signed HTTP links to the files of a local store, for a browser on this machine.

A browser refuses ``file://`` links from a web page, so a run's summary in the Prefect
UI could not open a notebook stored in a local folder. ``nbjobs serve --files-port``
(the local server's worker has one) serves such files read-only on 127.0.0.1, and
only those it was given a link to: each link carries an HMAC of the file's path made
with a key kept in ``$NBJOBS_HOME/files.key`` (readable by its owner only), as an S3
presigned URL carries a signature. No registry is kept; links stay valid across
worker restarts, for as long as the key and the port stay.

Example:
    >>> link = signed_link("http://127.0.0.1:4280", Path("/runs/run-notebook/3f2a/notebook.html"))
    >>> link
    'http://127.0.0.1:4280/files/9c1e.../runs/run-notebook/3f2a/notebook.html'
    >>> signed_path(urllib.parse.urlsplit(link).path)
    PosixPath('/runs/run-notebook/3f2a/notebook.html')
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from notebook_jobs.blocks.settings import nbjobs_home, settings

KEY_NAME = "files.key"
# where the worker running this code serves local stores (tasks.runtime sets it)
_serving_at: ContextVar[str | None] = ContextVar("nbjobs_files_url", default=None)
ROUTE = "/files/"
SIGNATURE_CHARS = 32  # hex digits of HMAC-SHA256 kept: 128 bits


def links_key(home: Path | None = None) -> bytes:
    """The signing key, made on first use (owner read/write only)."""
    path = (home or nbjobs_home()) / KEY_NAME
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_bytes()
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(32))
        return path.read_bytes()


def _signature(key: bytes, path: str) -> str:
    return hmac.new(key, path.encode(), hashlib.sha256).hexdigest()[:SIGNATURE_CHARS]


def signed_link(base_url: str, path: Path, key: bytes | None = None) -> str:
    """A browser link to the local file ``path`` (absolute), through the file server."""
    text = str(path)
    quoted = urllib.parse.quote(text.lstrip("/"), safe="/")
    return f"{base_url.rstrip('/')}{ROUTE}{_signature(key or links_key(), text)}/{quoted}"


def signed_path(url_path: str, key: bytes | None = None) -> Path | None:
    """The file a link's path names, if its signature is right (else None)."""
    if not url_path.startswith(ROUTE):
        return None
    signature, _, quoted = url_path.removeprefix(ROUTE).partition("/")
    text = "/" + urllib.parse.unquote(quoted)
    if not hmac.compare_digest(signature, _signature(key or links_key(), text)):
        return None
    return Path(text)


@contextlib.contextmanager
def serving_files_at(url: str | None) -> Iterator[None]:
    """Links made in this block point at the file server at ``url``.

    Args:
        url: The server's base URL (``http://127.0.0.1:4280``), or None for the one
            ``$NBJOBS_FILES_URL`` names, if any.
    """
    token = _serving_at.set(url)
    try:
        yield
    finally:
        _serving_at.reset(token)


def files_url() -> str | None:
    """Where local-store links point: the current runtime's file server, else the one
    ``$NBJOBS_FILES_URL`` names (a flow run in a subprocess of the worker), else none."""
    return _serving_at.get() or settings().files_url
