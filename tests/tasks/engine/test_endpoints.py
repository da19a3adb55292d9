"""Annotated cells, read as Kernel Gateway reads them; bad annotations refused in one line."""

from __future__ import annotations

import base64

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from notebook_jobs.blocks.exceptions import NotebookInputError
from notebook_jobs.tasks.engine.endpoints import (
    endpoint_notebook,
    find_endpoint,
    find_endpoints,
    response_of,
    setup_cells,
)
from notebook_jobs.tasks.engine.gateway import authorized
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.unit


def notebook(*sources: str) -> nbformat.NotebookNode:
    return new_notebook(cells=[new_code_cell(source) for source in sources])


def test_the_example_has_its_endpoints_and_setup_cells() -> None:
    example = nbformat.read(EXAMPLES / "endpoints.ipynb", as_version=4)
    found = find_endpoints(example)
    assert [(e.route, e.response_cell is not None) for e in found] == [
        ("POST /echo", False),
        ("GET /prices/:item", True),
        ("POST /divide", False),
    ]
    assert [e.slug for e in found] == ["post-echo", "get-prices-item", "post-divide"]
    assert setup_cells(example) == [1]
    assert find_endpoint(example, "get-prices-item") == find_endpoint(example, "GET /prices/:item")


@pytest.mark.parametrize(
    ("sources", "says"),
    [
        (("x = 1",), "the notebook has no endpoint"),
        (("# post /items\nprint(1)",), "cell 0: `# post /items` is not an endpoint annotation"),
        (("# PATCH /items\nprint(1)",), "METHOD one of GET, PUT, POST, DELETE"),
        (("# GET items\nprint(1)",), "cell 0: `# GET items` is not an endpoint annotation"),
        (("# GET /items  the list\nprint(1)",), "is not a URL path"),
        (("# GET /a\nprint(1)", "# GET /a\nprint(2)"), "cells 0 and 1 both answer `GET /a`"),
        (("# ResponseInfo GET /a\nprint(1)",), "has no `# GET /a` cell"),
    ],
)
def test_bad_annotations_are_refused_in_one_line(sources: tuple[str, ...], says: str) -> None:
    with pytest.raises(NotebookInputError) as refused:
        find_endpoints(notebook(*sources))
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_an_unknown_route_lists_the_known_ones() -> None:
    with pytest.raises(NotebookInputError, match="has no endpoint 'GET /b'; it has GET /a"):
        find_endpoint(notebook("# GET /a\nprint(1)"), "GET /b")


def test_the_job_notebook_sets_request_and_the_response_is_read_back() -> None:
    source = notebook(
        "import json",
        "# GET /a/:id\nprint(json.loads(REQUEST)['path']['id'])",
        '# ResponseInfo GET /a/:id\nprint(json.dumps({"status": 201, "headers": {"X-A": "1"}}))',
    )
    job = endpoint_notebook(source, find_endpoints(source)[0], {"path": {"id": "7"}})
    assert [cell.source.splitlines()[0] for cell in job.cells] == [
        "import json",
        'REQUEST = "{\\"body\\": \\"\\", \\"args\\": {}, \\"path\\": {\\"id\\": \\"7\\"}, \\"headers\\": {}}"',
        "# GET /a/:id",
        "# ResponseInfo GET /a/:id",
    ]
    job.cells[2].outputs = [{"output_type": "stream", "name": "stdout", "text": "7\n"}]
    job.cells[3].outputs = [
        {
            "output_type": "stream",
            "name": "stdout",
            "text": '{"status": 201, "headers": {"X-A": "1"}}',
        }
    ]
    assert response_of(job) == {
        "status": 201,
        "headers": {"Content-Type": "text/plain", "X-A": "1"},
        "body": "7\n",
    }


def test_basic_and_token_auth_take_the_same_secret() -> None:
    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert authorized(basic("nbjobs", "pw"), None, "nbjobs", "pw")
    assert authorized("token pw", None, "nbjobs", "pw")
    assert authorized("", "pw", "nbjobs", "pw")  # ?token=, as the gateway takes it
    assert not authorized(basic("nbjobs", "wrong"), None, "nbjobs", "pw")
    assert not authorized(basic("admin", "pw"), None, "nbjobs", "pw")
    assert not authorized("Basic !!!", None, "nbjobs", "pw")
    assert not authorized("", None, "nbjobs", "pw")
