"""Notebook endpoints: cells annotated ``# METHOD /path``, as Jupyter Kernel Gateway reads them.

Kernel Gateway's notebook-http mode turns a code cell whose first line is
``# GET /items/:id`` into an endpoint: the cell reads the request from ``REQUEST``
(a JSON string with ``body``, ``args``, ``path`` and ``headers``) and what it
prints is the response; a ``# ResponseInfo GET /items/:id`` cell prints
``{"status": ..., "headers": {...}}``. Every other code cell runs once, when the
kernel starts.

This module finds them with the gateway's own parser (so both modes agree on what
an endpoint is), refuses what the gateway would serve wrongly or not at all, and
builds the notebook a job-mode run executes: the setup cells, ``REQUEST``, the
endpoint's cell and its ResponseInfo cell.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from kernel_gateway.notebook_http.cell.parser import APICellParser
from kernel_gateway.notebook_http.request_utils import format_request
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell

from notebook_jobs.blocks.exceptions import NotebookInputError

METHODS = ("GET", "PUT", "POST", "DELETE")  # what Kernel Gateway serves
ENDPOINT_TAG = "nbjobs-endpoint"
RESPONSE_TAG = "nbjobs-response-info"
REQUEST_TAG = "nbjobs-request"
# a first line that means to be an annotation: a comment, a word, then a path or an
# HTTP method; Kernel Gateway silently ignores the ones it cannot read
_LOOKS_ANNOTATED = re.compile(
    r"^\s*#\s*(?:ResponseInfo\s+)?(?:[A-Za-z]+\s+/|(?i:get|put|post|delete|patch|head|options)\b)"
)
_PATH = re.compile(r"^/(?:[A-Za-z0-9._~!$&'()*+,;=@-]|:[A-Za-z_][A-Za-z0-9_]*|/)*$")


@dataclass(frozen=True)
class Endpoint:
    """One annotated cell: ``POST /items/:id`` at cell ``cell`` (0-based, as in the file)."""

    method: str
    path: str
    cell: int
    response_cell: int | None = None

    @property
    def slug(self) -> str:
        """The endpoint as a deployment name: ``POST /handle_event`` gives ``post-handle_event``.

        Example:
            >>> Endpoint("GET", "/items/:id", 3).slug
            'get-items-id'
        """
        words = re.sub(r"[^A-Za-z0-9_]+", "-", self.path).strip("-")
        return f"{self.method.lower()}-{words}" if words else self.method.lower()

    @property
    def route(self) -> str:
        """``METHOD /path``, as annotated."""
        return f"{self.method} {self.path}"


def _parser() -> APICellParser:
    return APICellParser(comment_prefix="#")


def find_endpoints(notebook: NotebookNode) -> list[Endpoint]:
    """The notebook's endpoints, in cell order, each with its ResponseInfo cell if any.

    Raises:
        NotebookInputError: A cell's annotation is malformed (one line says which and
            how to write it), two cells annotate the same method and path, a
            ResponseInfo cell has no endpoint, or no cell is annotated at all.
    """
    parser = _parser()
    endpoints: dict[tuple[str, str], Endpoint] = {}
    responses: dict[tuple[str, str], int] = {}
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        source = cell.source
        first = source.splitlines()[0] if source.strip() else ""
        if parser.is_api_response_cell(source):
            key = _route(parser.kernelspec_api_response_indicator.match(source), index, first)
            if key in responses:
                raise NotebookInputError(
                    f"cells {responses[key]} and {index} are both `# ResponseInfo {key[0]} "
                    f"{key[1]}`: keep one"
                )
            responses[key] = index
        elif parser.is_api_cell(source):
            key = _route(parser.kernelspec_api_indicator.match(source), index, first)
            if key in endpoints:
                raise NotebookInputError(
                    f"cells {endpoints[key].cell} and {index} both answer `{key[0]} {key[1]}`: "
                    "one cell per method and path (merge them, or give one another path)"
                )
            endpoints[key] = Endpoint(key[0], key[1], index)
        elif _LOOKS_ANNOTATED.match(first):
            raise NotebookInputError(
                f"cell {index}: `{first.strip()}` is not an endpoint annotation; write "
                f"`# METHOD /path` with METHOD one of {', '.join(METHODS)} in capitals and a "
                "path starting with / (`:name` for a path parameter)"
            )
    for key, index in responses.items():
        if key not in endpoints:
            raise NotebookInputError(
                f"cell {index}: `# ResponseInfo {key[0]} {key[1]}` has no `# {key[0]} {key[1]}` "
                "cell to answer for"
            )
    if not endpoints:
        raise NotebookInputError(
            "the notebook has no endpoint: annotate a code cell with a first line such as "
            "`# GET /hello` or `# POST /items/:id`"
        )
    return [
        Endpoint(e.method, e.path, e.cell, responses.get((e.method, e.path)))
        for e in sorted(endpoints.values(), key=lambda e: e.cell)
    ]


def _route(matched: re.Match[str] | None, index: int, first: str) -> tuple[str, str]:
    assert matched is not None
    method, path = matched.group(1), matched.group(2).strip()
    if not _PATH.match(path):
        raise NotebookInputError(
            f"cell {index}: `{first.strip()}`: the path {path!r} is not a URL path; write it "
            "as /words/:name, with no spaces or comment after it"
        )
    return method, path


def find_endpoint(notebook: NotebookNode, route: str) -> Endpoint:
    """The endpoint ``route`` names (``POST /handle_event``, or its slug ``post-handle_event``).

    Raises:
        NotebookInputError: No cell answers it (the message lists those that do).
    """
    endpoints = find_endpoints(notebook)
    wanted = " ".join(route.split())
    for endpoint in endpoints:
        if wanted in (endpoint.route, endpoint.slug):
            return endpoint
    raise NotebookInputError(
        f"the notebook has no endpoint {route!r}; it has "
        + ", ".join(endpoint.route for endpoint in endpoints)
    )


def setup_cells(notebook: NotebookNode) -> list[int]:
    """The code cells Kernel Gateway runs once when a kernel starts: all but the annotated."""
    parser = _parser()
    return [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        and not parser.is_api_cell(cell.source)
        and not parser.is_api_response_cell(cell.source)
    ]


def endpoint_notebook(
    notebook: NotebookNode, endpoint: Endpoint, request: dict[str, Any]
) -> NotebookNode:
    """The notebook a job-mode call runs: the setup cells, ``REQUEST`` as the gateway
    sets it, the endpoint's cell, and its ResponseInfo cell.

    ``request`` is shaped as the gateway's ``REQUEST``: ``body``, ``args``, ``path``,
    ``headers`` (missing ones are empty).
    """
    shaped = {
        "body": request.get("body", ""),
        "args": request.get("args") or {},
        "path": request.get("path") or {},
        "headers": request.get("headers") or {},
    }
    job = NotebookNode(
        {
            "cells": [],
            "metadata": notebook.metadata,
            "nbformat": notebook.nbformat,
            "nbformat_minor": notebook.nbformat_minor,
        }
    )
    for index in setup_cells(notebook):
        job.cells.append(new_code_cell(notebook.cells[index].source))
    job.cells.append(
        new_code_cell(format_request(json.dumps(shaped)), metadata={"tags": [REQUEST_TAG]})
    )
    job.cells.append(
        new_code_cell(notebook.cells[endpoint.cell].source, metadata={"tags": [ENDPOINT_TAG]})
    )
    if endpoint.response_cell is not None:
        job.cells.append(
            new_code_cell(
                notebook.cells[endpoint.response_cell].source, metadata={"tags": [RESPONSE_TAG]}
            )
        )
    for cell in job.cells:
        cell.pop("id", None)
    return job


def response_of(executed: NotebookNode) -> dict[str, Any]:
    """The HTTP response an executed job-mode notebook gives, as the gateway would send it.

    The endpoint cell's stdout is the body (else its result's data as JSON, else
    empty); the ResponseInfo cell's stdout, JSON, sets the status and headers.

    Returns:
        ``{"status": int, "headers": {...}, "body": str}``.
    """
    status, headers, body = 200, {"Content-Type": "text/plain"}, ""
    for cell in executed.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if ENDPOINT_TAG in tags:
            body = _printed(cell)
            if not body:
                for output in cell.get("outputs", []):
                    if output.get("output_type") == "execute_result":
                        body = json.dumps(output.get("data", {}))
        elif RESPONSE_TAG in tags:
            info = json.loads(_printed(cell) or "{}")
            headers.update(info.get("headers") or {})
            status = int(info.get("status", status))
    return {"status": status, "headers": headers, "body": body}


def _printed(cell: NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream" and output.get("name") == "stdout"
    )
