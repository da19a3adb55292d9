"""The plain-HTTP API client against a server that closes a kept-alive connection."""

from __future__ import annotations

import socket
import threading
import time

from notebook_jobs.deployments.api import PrefectHTTP


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
