"""The read-only file server of ``nbjobs serve --files-port``: local-store links that open
from the Prefect UI.

It answers ``GET`` and ``HEAD`` on 127.0.0.1 for the signed links of
``blocks.local_links`` (404 for anything else, and for a bad signature: nothing says
which files exist), in threads of its own beside the worker's event loop.

Example:
    >>> with serving_files(4280):          # the worker runs inside
    ...     asyncio.run(serve(...))
"""

from __future__ import annotations

import contextlib
import errno
import mimetypes
import shutil
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from notebook_jobs.blocks.local_links import links_key, signed_path

HOST = "127.0.0.1"
FILES_URL_ENV = "NBJOBS_FILES_URL"
CONTENT_TYPES = {
    ".ipynb": "application/x-ipynb+json",
    ".json": "application/json",
    ".csv": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
    ".out": "text/plain; charset=utf-8",
    ".err": "text/plain; charset=utf-8",
}
LISTEN_BACKLOG = 16
DOWNLOADED = (".ipynb", ".json")  # saved with their names, not shown as raw JSON


def download_name(path: Path) -> str:
    """The name a browser saves ``path`` under: a run's own artefacts share their names
    across runs, so they are saved as ``<run>-notebook.ipynb``."""
    # here, not at the top: the layout imports the stores (and Prefect), which the
    # light commands that import this module (nbjobs run's client side) must not
    from notebook_jobs.tasks.engine.layout import EXECUTED_NAME, INPUT_NAME, RESULT_NAME

    if path.name in (INPUT_NAME, EXECUTED_NAME, RESULT_NAME):
        return f"{path.parent.name}-{path.name}"
    return path.name


class _Handler(BaseHTTPRequestHandler):
    server: _FileServer
    server_version = "nbjobs-files"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        url_path = urllib.parse.urlsplit(self.path).path
        path = signed_path(url_path, self.server.key)
        if path is None or not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND, "no such file, or the link is not signed")
            return
        content_type = CONTENT_TYPES.get(path.suffix.lower()) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        try:
            handle = path.open("rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "the file cannot be read")
            return
        with handle:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("X-Content-Type-Options", "nosniff")
            if path.suffix.lower() in DOWNLOADED:
                quoted = urllib.parse.quote(download_name(path))
                self.send_header("Content-Disposition", f"attachment; filename*=UTF-8''{quoted}")
            if content_type.startswith("text/html"):
                # a notebook's HTML may hold any script its outputs had: an origin of its own
                self.send_header("Content-Security-Policy", "sandbox allow-scripts allow-popups")
            self.end_headers()
            if body:
                with contextlib.suppress(ConnectionError):
                    shutil.copyfileobj(handle, self.wfile)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per image of a summary page would drown the worker's log


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, key: bytes, bound: socket.socket | None = None) -> None:
        self.key = key
        if bound is None:
            super().__init__((HOST, port), _Handler)
            return
        # a socket its starter bound and kept (``bind_first``): no window in which
        # another program could take the port
        super().__init__(bound.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = bound  # listening already (bind_first)
        self.server_address = bound.getsockname()


def bind_first(first: int, tried: int, taken: set[int] | None = None) -> socket.socket:
    """A socket bound on 127.0.0.1 to the first free port of ``first`` and the
    ``tried - 1`` after it (less ``taken``), listening already: its server (in the
    worker it is handed to) accepts the connections queued meanwhile.

    Raises:
        OSError: Every one of those ports is in use.
    """
    for port in range(first, first + tried):
        if port in (taken or set()):
            continue
        sock = socket.socket()
        # as every HTTP server does: a port whose last connections linger in TIME_WAIT
        # after a stop is ours again (without this, a restart moved the file server
        # 4280 -> 4281 and every link in earlier summaries died). With it, two sockets
        # can both bind a port until one listens: listening at once makes the port ours
        # alone (a second home starting at the same moment gets the next one)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            continue
        sock.set_inheritable(True)
        return sock
    raise OSError(errno.EADDRINUSE, f"ports {first} to {first + tried - 1} are all in use")


@contextlib.contextmanager
def serving_files(
    port: int, home: Path | None = None, bound: socket.socket | None = None
) -> Iterator[str]:
    """Serve signed local-store links on 127.0.0.1:``port`` (or on the socket ``bound``
    already) while the block runs; yields the base URL (``http://127.0.0.1:4280``), which
    the runs' ``Runtime.files_url`` names (``tasks/runtime.py``) for their links to point here.

    Raises:
        OSError: The port cannot be bound.
    """
    server = _FileServer(port, links_key(home), bound)
    thread = threading.Thread(target=server.serve_forever, name="nbjobs-files", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
