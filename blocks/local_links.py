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

import hashlib
import hmac
import os
import secrets
import urllib.parse
from pathlib import Path

from notebook_jobs.blocks.settings import nbjobs_home

KEY_NAME = "files.key"
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
