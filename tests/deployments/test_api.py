"""The plain-HTTP API client against servers that misbehave as real ones do: a kept-alive
connection closed, a busy database (503), an answer that comes too late."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import uuid

import pytest

from notebook_jobs.blocks.exceptions import APIError
from notebook_jobs.deployments.api import API_PAGE_SIZE, PrefectHTTP


def test_a_post_on_a_connection_the_server_closed_is_sent_on_a_new_one() -> None:
    """The server answers one request per connection, then closes it (as a keep-alive
    times out); the next POST, which must not arrive twice, finds a broken pipe
    before a byte arrived, and goes out again on a new connection, once."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            received.append(connection.recv(65536).split(b"\r\n", 1)[0])
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
            )
            connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    api = PrefectHTTP(f"http://127.0.0.1:{port}/api")
    try:
        assert api.request("GET", "/health").status_code == 200
        time.sleep(0.3)  # the server's close (and its reset) arrive first
        assert api.request("POST", "/flow_runs/", json={}, idempotent=False).status_code == 200
    finally:
        api.close()
        listener.close()
    assert received == [b"GET /api/health HTTP/1.1", b"POST /api/flow_runs/ HTTP/1.1"]


class FakePrefect:
    """``POST /deployments/{id}/create_flow_run`` as Prefect answers it, on 127.0.0.1:
    busy (503) for the first ``busy`` calls, silent past the client's timeout for the
    next ``silent`` ones (while it does create the run, as a slow server does), then 201.
    Runs are keyed by their idempotency key, as Prefect keys them."""

    def __init__(self, busy: int = 0, silent: int = 0, silence_seconds: float = 0.0) -> None:
        self.busy, self.silent, self.silence_seconds = busy, silent, silence_seconds
        self.calls: list[str | None] = []  # the idempotency key of every create
        self.runs: dict[str, str] = {}  # key -> run id
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = body.get("idempotency_key")
                fake.calls.append(key)
                if len(fake.calls) <= fake.busy:
                    return self._answer(503, {"exception_message": "Service Unavailable"})
                run_id = fake.runs.setdefault(key or str(uuid.uuid4()), str(uuid.uuid4()))
                if len(fake.calls) <= fake.busy + fake.silent:
                    time.sleep(fake.silence_seconds)  # made, but the answer comes too late
                self._answer(201, {"id": run_id})

            def _answer(self, status: int, document: dict[str, str]) -> None:
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_create_answered_503_twice_then_201_makes_one_run() -> None:
    fake = FakePrefect(busy=2)
    try:
        with PrefectHTTP(fake.url) as api:
            run_id = api.trigger(
                "run-notebook", "adhoc", {}, deployment_id="d", idempotency_key="nbjobs-run-1"
            )
    finally:
        fake.close()
    assert fake.calls == ["nbjobs-run-1"] * 3
    assert list(fake.runs.values()) == [run_id]


def test_a_create_that_timed_out_is_sent_again_with_its_key_and_makes_one_run() -> None:
    """The server made the run but answered after the client's timeout: the retry
    carries the same key, and the server gives the same run back."""
    fake = FakePrefect(silent=1, silence_seconds=1.5)
    try:
        with PrefectHTTP(fake.url, timeout=0.5) as api:
            run_id = api.trigger(
                "run-notebook", "adhoc", {}, deployment_id="d", idempotency_key="nbjobs-run-2"
            )
    finally:
        fake.close()
    assert fake.calls == ["nbjobs-run-2", "nbjobs-run-2"]
    assert fake.runs == {"nbjobs-run-2": run_id}


def test_a_create_without_a_key_that_timed_out_is_not_sent_again() -> None:
    fake = FakePrefect(silent=1, silence_seconds=1.5)
    try:
        with PrefectHTTP(fake.url, timeout=0.5) as api, pytest.raises(APIError) as raised:
            api.request("POST", "/deployments/d/create_flow_run", json={})
    finally:
        fake.close()
    assert len(fake.calls) == 1 and "no answer within 0.5 s" in str(raised.value)


def test_a_server_busy_past_the_deadline_is_one_line_naming_it() -> None:
    fake = FakePrefect(busy=1000)
    try:
        with PrefectHTTP(fake.url, deadline=1.5) as api, pytest.raises(APIError) as raised:
            api.trigger("run-notebook", "adhoc", {}, deployment_id="d", idempotency_key="k")
    finally:
        fake.close()
    message = str(raised.value)
    assert "busy or away for" in message and "NBJOBS_API_DEADLINE" in message
    assert "HTTP 503" in message and "\n" not in message
    assert raised.value.status_code == 503
    assert len(fake.calls) >= 3 and set(fake.calls) == {"k"}


def test_a_redirect_is_an_error_not_an_answer(prefect_server: str) -> None:
    # Prefect answers 307 to a path with a trailing slash; the write behind it never
    # happened, so a caller must not take the 307 for its 200
    with PrefectHTTP(prefect_server) as api:
        with pytest.raises(APIError, match="HTTP 307, a redirect, not followed") as refused:
            api.request("POST", "/flow_runs/filter/", json={})
        assert refused.value.status_code == 307
        assert api.request("POST", "/flow_runs/filter", json={"limit": 1}).status_code == 200


def test_a_filter_is_read_to_its_last_page(prefect_server: str) -> None:
    """The API answers 200 at most: the lab's compute types read one page, and a pool
    with more queues than that lost the rest."""
    pool = f"paged-{uuid.uuid4().hex[:6]}"
    names = {f"q{n:03}" for n in range(API_PAGE_SIZE + 5)}
    with PrefectHTTP(prefect_server) as api:
        api.request("POST", "/work_pools/", json={"name": pool, "type": "process"})
        for name in names:
            api.request("POST", f"/work_pools/{pool}/queues", json={"name": name})
        found = api.filter_all(f"/work_pools/{pool}/queues/filter", {})
    assert {q["name"] for q in found} == names | {"default"}
    assert len(found) == len(names) + 1  # each once, across the pages
