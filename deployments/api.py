"""A small plain-HTTP client of Prefect's REST API: what a calling system does.

It uses the standard library only (no Prefect client, no httpx), so it doubles as a
reference for callers in any language, and ``nbjobs run`` can use it without paying
for imports: look the deployment up by name, create a flow run with parameters, poll
its state, read its logs and artifacts, and fetch the stored result through the
``result`` link of the run's summary artifact. Every request is asked again, with
exponential backoff up to a deadline (``NBJOBS_API_DEADLINE``, 120 s), while the
server answers HTTP 503 (Prefect's answer when its database is busy, e.g. SQLite's
``database is locked``) or 429; a request that may arrive twice (a GET, or a create
with an idempotency key) also while the server does not answer or refuses the
connection (restarting). A run is never created twice: ``trigger`` sends a key.

Example:
    >>> api = PrefectHTTP("http://127.0.0.1:4200/api", auth_string="admin:pass")
    >>> run = api.trigger("run-notebook", "report", {"parameters": {"n": 3}})
    >>> api.wait(run)["state"]["type"]
    'COMPLETED'
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from notebook_jobs.blocks.exceptions import APIError
from notebook_jobs.blocks.retry import BUSY_STATUSES
from notebook_jobs.blocks.settings import settings

BACKOFF_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 4.0
POLL_INTERVAL_SECONDS = 0.5
API_PAGE_SIZE = 200  # the most items a filter answers at once (Prefect's default limit)
# a connection idle longer than this is opened afresh: Prefect's server closes idle
# keep-alive connections after PREFECT_SERVER_API_KEEPALIVE_TIMEOUT (5 s by default)
KEEPALIVE_SECONDS = 2.0
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


@dataclass
class Response:
    """An HTTP response, read whole."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def auth_header(auth_string: str | None) -> dict[str, str]:
    """The header for a server started with ``PREFECT_SERVER_API_AUTH_STRING``."""
    if not auth_string:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


class PrefectHTTP:
    """Trigger and follow deployment runs over Prefect's REST API, with plain HTTP.

    One keep-alive connection to the API per thread (a run's follow loop makes a few
    requests a second; tests trigger from many threads at once); artefact links
    (presigned HTTPS, or ``file://`` for a local store) are fetched without the API's
    credentials. Busy, silent or restarting servers are asked again up to a deadline
    (``request``).
    """

    def __init__(
        self,
        api_url: str,
        *,
        auth_string: str | None = None,
        timeout: float = 30.0,
        deadline: float | None = None,
    ):
        """A client of the API at ``api_url``; nothing is sent yet.

        Args:
            api_url: The API's base URL (``http://127.0.0.1:4200/api``).
            auth_string: ``user:password`` of a server started with
                ``PREFECT_SERVER_API_AUTH_STRING``.
            timeout: Seconds one request may wait for its answer.
            deadline: Seconds a request is asked again while the server is busy or
                away (default ``NBJOBS_API_DEADLINE``); 0 asks once.
        """
        self._deadline = settings().api_deadline_seconds if deadline is None else deadline
        self.api_url = api_url.rstrip("/")
        parts = urllib.parse.urlsplit(self.api_url)
        self._scheme, self._netloc, self._base = parts.scheme, parts.netloc, parts.path
        self._headers = {"Accept": "application/json", **auth_header(auth_string)}
        self._timeout = timeout
        self._local = threading.local()

    @property
    def _connection(self) -> http.client.HTTPConnection | None:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        return connection

    @_connection.setter
    def _connection(self, connection: http.client.HTTPConnection | None) -> None:
        self._local.connection = connection

    def close(self) -> None:
        """Close this thread's connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> PrefectHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, target: str, body: bytes | None, idempotent: bool) -> Response:
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        idle = time.monotonic() - getattr(self._local, "used", 0.0)
        if idle > KEEPALIVE_SECONDS:  # the server has probably closed it: start afresh
            self.close()
        for attempt in range(2):
            if self._connection is None:
                kind = (
                    http.client.HTTPSConnection
                    if self._scheme == "https"
                    else http.client.HTTPConnection
                )
                self._connection = kind(self._netloc, timeout=self._timeout)
            try:
                try:
                    self._connection.request(method, target, body=body, headers=headers)
                except BrokenPipeError as error:
                    # the server closed the connection before reading this request (a
                    # kept-alive one it timed out): nothing arrived, so even a request
                    # that must not arrive twice is sent again, once
                    self.close()
                    if attempt:
                        raise APIError(f"{method} {self.api_url}: {error}") from error
                    continue
                answer = self._connection.getresponse()
                self._local.used = time.monotonic()
                return Response(answer.status, answer.read())
            except ConnectionRefusedError as error:
                # a server restarting: nothing arrived, so any request may go again
                self.close()
                raise APIError(f"{method} {self.api_url}: {error}", again=True) from error
            except (http.client.HTTPException, ConnectionError) as error:
                self.close()
                # a kept-alive connection the server had closed: the request never
                # arrived, but only a request that may arrive twice is sent again
                if attempt or not idempotent:
                    raise APIError(f"{method} {self.api_url}: {error}", again=idempotent) from error
            except TimeoutError as error:
                self.close()
                raise APIError(
                    f"{method} {self.api_url}: no answer within {self._timeout:g} s",
                    again=idempotent,
                ) from error
            except OSError as error:  # unreachable
                self.close()
                raise APIError(f"{method} {self.api_url}: {error}", again=idempotent) from error
        raise AssertionError("unreachable")

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        idempotent: bool | None = None,
        deadline: float | None = None,
    ) -> Response:
        """One API call (or, for a full URL, a plain fetch), asked again with
        exponential backoff until the deadline while the server answers 503 or 429,
        and, where that is safe (a GET, or a call marked ``idempotent``), while it does
        not answer or refuses the connection.

        Raises:
            APIError: Any other error status, the server was still busy or away at the
                deadline (the message says how long was waited), or a call that must
                not arrive twice got no answer.
        """
        if path.startswith(("http://", "https://", "file://")):
            return fetch(path, self._timeout)
        target = self._base + path
        if params:
            target += "?" + urllib.parse.urlencode(params)
        body = None if json is None else _dumps(json)
        safe = bool(idempotent or method == "GET")
        deadline = self._deadline if deadline is None else deadline
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                response = self._send(method, target, body, safe)
                if response.status_code not in BUSY_STATUSES:
                    break
                why = f"HTTP {response.status_code} {' '.join(response.text.split())[:200]}"
                last: APIError | None = None
                status: int | None = response.status_code
            except APIError as error:
                if not error.again:
                    raise
                why, last, status = str(error), error, error.status_code
            attempt += 1
            left = deadline - (time.monotonic() - started)
            if left <= 0:
                if not deadline:
                    raise APIError(f"{method} {path}: {why}", status_code=status) from last
                raise APIError(
                    f"{method} {path}: the server was busy or away for "
                    f"{time.monotonic() - started:.0f} s, {attempt} tries ({why}); set "
                    "NBJOBS_API_DEADLINE to wait longer",
                    status_code=status,
                ) from last
            # jittered, so that many clients told "busy" at once do not come back at once
            backoff = min(BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
            time.sleep(min(backoff * random.uniform(0.5, 1), left))
        if 300 <= response.status_code < 400:
            # not followed: a write redirected has done nothing (Prefect answers 307 to a
            # path with a trailing slash), and a read redirected has no answer in it
            raise APIError(
                f"{method} {path}: HTTP {response.status_code}, a redirect, not followed: "
                "the path is not one of the API's own",
                status_code=response.status_code,
            )
        if response.status_code >= 400:
            raise APIError(
                f"{method} {path}: HTTP {response.status_code} {response.text[:500]}",
                status_code=response.status_code,
                body=response.text,
            )
        return response

    def health(self) -> bool:
        """Whether the API answers ``GET /health``."""
        try:  # asked once: its callers poll it
            return self.request("GET", "/health", deadline=0).status_code == 200
        except APIError:
            return False

    def deployment_id(self, flow: str, deployment: str) -> str:
        """``GET /deployments/name/{flow}/{deployment}``: the deployment's id."""
        return str(self.request("GET", f"/deployments/name/{flow}/{deployment}").json()["id"])

    def trigger(
        self,
        flow: str,
        deployment: str,
        parameters: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        tags: list[str] | None = None,
        work_queue_name: str | None = None,
        deployment_id: str | None = None,
        name: str | None = None,
    ) -> str:
        """``POST /deployments/{id}/create_flow_run``; returns the new flow run's id.

        The same ``idempotency_key`` sent twice returns the same run instead of a second.
        ``name``: the run's (default: Prefect makes one up).
        """
        body: dict[str, Any] = {"parameters": parameters}
        if name:
            body["name"] = name
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        if tags:
            body["tags"] = tags
        if work_queue_name:
            body["work_queue_name"] = work_queue_name  # e.g. a higher-priority queue
        deployment_id = deployment_id or self.deployment_id(flow, deployment)
        run = self.request(
            "POST",
            f"/deployments/{deployment_id}/create_flow_run",
            json=body,
            idempotent=bool(idempotency_key),  # the same key gives back the same run
        )
        return str(run.json()["id"])

    def flow_run(self, run_id: str) -> dict[str, Any]:
        """``GET /flow_runs/{id}``."""
        run: dict[str, Any] = self.request("GET", f"/flow_runs/{run_id}").json()
        return run

    def set_state(
        self, run_id: str, state_type: str, message: str = "", *, force: bool = True
    ) -> bool:
        """``POST /flow_runs/{id}/set_state`` (``CANCELLING`` asks the worker to stop).

        Returns:
            Whether the server accepted it (without ``force`` it may refuse).
        """
        state = {"type": state_type, "name": state_type.title(), "message": message}
        answer = self.request(
            "POST", f"/flow_runs/{run_id}/set_state", json={"state": state, "force": force}
        ).json()
        return bool(answer.get("status") == "ACCEPT")

    def cancel(self, run_id: str, message: str, state: str | None = None) -> None:
        """Cancel a run that has not started outright; ask a running one's worker to
        stop it (``CANCELLING``); leave one that has ended. ``state``: its state type if
        the caller has just read it."""
        state = state or (self.flow_run(run_id).get("state") or {}).get("type")
        if state in FINAL_STATES:
            return
        # not forced: if a worker has started it meanwhile, the server refuses, and the
        # run is asked to stop like any running one
        if state in ("SCHEDULED", "PENDING") and self.set_state(
            run_id, "CANCELLED", message, force=False
        ):
            return
        self.set_state(run_id, "CANCELLING", message)

    def wait(self, run_id: str, timeout: float = 300.0) -> dict[str, Any]:
        """Poll a flow run until it is COMPLETED, FAILED, CANCELLED or CRASHED."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.flow_run(run_id)
            if run["state"] and run["state"]["type"] in FINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"flow run {run_id} still {run['state']['type']} after {timeout} s"
                )
            time.sleep(POLL_INTERVAL_SECONDS)

    def flow_runs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """``POST /flow_runs/filter`` with ``body``, every page."""
        return self.filter_all("/flow_runs/filter", body)

    def filter_all(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """``POST`` ``body`` to one of the API's ``.../filter`` paths; every page.

        The API answers ``API_PAGE_SIZE`` items at most, from ``offset``.
        """
        found: list[dict[str, Any]] = []
        while True:
            page = self.request(
                "POST",
                path,
                json={**body, "limit": API_PAGE_SIZE, "offset": len(found)},
                idempotent=True,  # a read
            ).json()
            found += page
            if len(page) < API_PAGE_SIZE:
                return found

    def logs(self, run_id: str, *, offset: int = 0) -> list[dict[str, Any]]:
        """``POST /logs/filter``: a flow run's log records, oldest first, from ``offset``."""
        body = {
            "logs": {"flow_run_id": {"any_": [run_id]}},
            "sort": "TIMESTAMP_ASC",
            "offset": offset,
            "limit": API_PAGE_SIZE,
        }
        records: list[dict[str, Any]] = self.request(
            "POST",
            "/logs/filter",
            json=body,
            idempotent=True,  # a read
        ).json()
        return records

    def artifacts(self, run_id: str) -> dict[str, dict[str, Any]]:
        """``POST /artifacts/filter`` for one flow run, by key: the newest version of each
        (a retried run published one per attempt)."""
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "sort": "CREATED_DESC"}
        found = self.request("POST", "/artifacts/filter", json=body, idempotent=True).json()
        newest: dict[str, dict[str, Any]] = {}
        for artifact in found:
            if artifact.get("key"):
                newest.setdefault(artifact["key"], artifact)
        return newest

    def result(self, run_id: str) -> dict[str, Any]:
        """The run's ``result.json``, fetched through the ``result`` link of its summary.

        Raises:
            LookupError: The run has no summary with a result link (it was refused
                before anything was stored, or it has not finished).
        """
        from notebook_jobs.tasks.models import summary_links  # pydantic: only here

        summaries = [
            a["data"] for key, a in self.artifacts(run_id).items() if key.endswith("-summary")
        ]
        links = [summary_links(text or "").get("result") for text in summaries]
        if not any(links):
            raise LookupError(f"flow run {run_id} has no result link in its summary")
        document: dict[str, Any] = self.request("GET", next(url for url in links if url)).json()
        return document


def fetch(url: str, timeout: float = 30.0) -> Response:
    """GET a presigned ``https://`` link, or read a ``file://`` one (a local store).

    Raises:
        APIError: The link did not answer 200, or the file is missing.
    """
    import urllib.request  # with ssl, 25 ms that a local run never needs

    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return Response(getattr(answer, "status", None) or 200, answer.read())
    except OSError as error:  # URLError and HTTPError are OSErrors
        raise APIError(f"GET {url}: {error}", status_code=getattr(error, "code", None)) from error


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
