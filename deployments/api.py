"""A small plain-HTTP client of Prefect's REST API: what a calling system does.

It uses httpx only (no Prefect client), so it doubles as a reference for callers in
any language: look the deployment up by name, create a flow run with parameters,
poll its state, list its artifacts, and fetch the stored result through the link
artifact. Every request retries HTTP 503 (Prefect's answer when its database is
busy, e.g. SQLite's ``database is locked``) and 429 with exponential backoff.

Example:
    >>> api = PrefectHTTP("http://127.0.0.1:4200/api", auth_string="admin:pass")
    >>> run = api.trigger("run-notebook", "report", {"parameters": {"n": 3}})
    >>> api.wait(run)["state"]["type"]
    'COMPLETED'
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx

RETRY_STATUSES = frozenset({429, 503})
MAX_ATTEMPTS = 6
BACKOFF_SECONDS = 0.25
POLL_INTERVAL_SECONDS = 0.5
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


def auth_header(auth_string: str | None) -> dict[str, str]:
    """The header for a server started with ``PREFECT_SERVER_API_AUTH_STRING``."""
    if not auth_string:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


class PrefectHTTP:
    """Trigger and follow deployment runs over Prefect's REST API, with plain HTTP."""

    def __init__(self, api_url: str, *, auth_string: str | None = None, timeout: float = 30.0):
        self.api_url = api_url.rstrip("/")
        self.client = httpx.Client(headers=auth_header(auth_string), timeout=timeout)
        # Artefact links are presigned: they must not carry the API's credentials.
        self.plain = httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the connection pools."""
        self.client.close()
        self.plain.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call (or, for a full URL, a plain fetch), retrying 503 and 429 with
        exponential backoff; raises on other errors."""
        external = path.startswith(("http://", "https://"))
        url = path if external else f"{self.api_url}{path}"
        client = self.plain if external else self.client
        for attempt in range(MAX_ATTEMPTS):
            response = client.request(method, url, **kwargs)
            if response.status_code not in RETRY_STATUSES or attempt == MAX_ATTEMPTS - 1:
                break
            time.sleep(BACKOFF_SECONDS * 2**attempt)
        response.raise_for_status()
        return response

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
    ) -> str:
        """``POST /deployments/{id}/create_flow_run``; returns the new flow run's id.

        The same ``idempotency_key`` sent twice returns the same run instead of a second.
        """
        body: dict[str, Any] = {"parameters": parameters}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        if tags:
            body["tags"] = tags
        if work_queue_name:
            body["work_queue_name"] = work_queue_name  # e.g. a higher-priority queue
        deployment_id = self.deployment_id(flow, deployment)
        run = self.request("POST", f"/deployments/{deployment_id}/create_flow_run", json=body)
        return str(run.json()["id"])

    def flow_run(self, run_id: str) -> dict[str, Any]:
        """``GET /flow_runs/{id}``."""
        run: dict[str, Any] = self.request("GET", f"/flow_runs/{run_id}").json()
        return run

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

    def artifacts(self, run_id: str) -> dict[str, dict[str, Any]]:
        """``POST /artifacts/filter`` for one flow run, by key."""
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        found = self.request("POST", "/artifacts/filter", json=body).json()
        return {a["key"]: a for a in found if a.get("key")}

    def result(self, run_id: str) -> dict[str, Any]:
        """The run's ``result.json``, fetched through its ``*-result`` link artifact."""
        link = next(
            a["data"] for key, a in self.artifacts(run_id).items() if key.endswith("-result")
        )
        document: dict[str, Any] = self.request("GET", link_target(link)).json()
        return document


def link_target(markdown_link: str) -> str:
    """The URL inside a link artifact's data, ``[text](url)``."""
    return markdown_link.rsplit("(", 1)[-1].rstrip(")")
