"""Secret parameters: the value reaches the kernel, and no stored or shown copy holds it."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pytest

from notebook_jobs.blocks.exceptions import SecretParameterError
from notebook_jobs.tasks.engine.secrets import MASK, RunSecrets, declared_secrets
from tests.conftest import DATA, run_flow, state_outcome
from tests.flows.test_security import everything_prefect_has

SECRET_NOTEBOOK = DATA / "secret.ipynb"


def test_masking_catches_the_forms_a_notebook_prints() -> None:
    value = 'pa"ss\\word-42'
    secrets = RunSecrets({"password": value})
    printed = f"{value} {value!r} {json.dumps(value)} {json.dumps({'p': value})}"
    assert secrets.mask(printed).count(MASK) == 4
    assert value not in secrets.mask(printed)
    assert value not in repr(secrets) and repr(secrets) == "RunSecrets(password)"


def test_html_escaped_split_streams_and_other_encodings_are_masked(tmp_path: Path) -> None:
    import html

    value = 'p<a>ss&"word'
    secrets = RunSecrets({"password": value})
    assert secrets.mask(f"<td>{html.escape(value)}</td>") == f"<td>{MASK}</td>"
    cell = nbformat.v4.new_code_cell("!echo")
    cell.outputs = [  # a subprocess's output, in two pipe-sized pieces cutting the value
        nbformat.v4.new_output("stream", name="stdout", text="before p<a>s"),
        nbformat.v4.new_output("stream", name="stdout", text='s&"word after\n'),
        nbformat.v4.new_output("display_data", data={"image/svg+xml": f"<svg>{value}</svg>"}),
    ]
    secrets.mask_cell(cell)
    assert cell.outputs[0].text == f"before {MASK} after\n" and len(cell.outputs) == 2
    assert value not in cell.outputs[1].data["image/svg+xml"]
    written = tmp_path / "latin1.csv"
    written.write_bytes(f"café;{value}\n".encode("cp1252"))
    assert secrets.mask_file(written)
    assert written.read_bytes() == f"café;{MASK}\n".encode("cp1252")


def test_a_short_value_is_not_masked_and_says_so() -> None:
    secrets = RunSecrets({"pin": "42"})
    assert secrets.mask("answer 42") == "answer 42" and secrets.unmasked == ["pin"]


def test_the_parameters_cell_declares_secrets() -> None:
    nb = nbformat.read(SECRET_NOTEBOOK, as_version=4)
    assert declared_secrets(nb) == {"password": None}
    nb.cells[0].source = 'password = ""  # secret: warehouse\ntoken = ""  # Secret\nuser = "x"'
    assert declared_secrets(nb) == {"password": "warehouse", "token": None}


def stored_files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def saved_secret(value: str) -> str:
    from prefect.blocks.system import Secret

    name = f"warehouse-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(name)
    return name


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_secret_reaches_the_kernel_and_nothing_stored_or_shown(
    where: str, tmp_path: Path, bucket: str, s3: Any
) -> None:
    value = f'S3cr3t-{uuid.uuid4().hex}-"quoted"'
    block = saved_secret(value)
    store = str(tmp_path / "store") if where == "local" else f"s3://{bucket}/runs"
    state = run_flow(
        notebook=str(SECRET_NOTEBOOK),
        parameters={"password": {"$secret": block}, "fail": True},
        store=store,
    )
    result = state_outcome(state).result  # failed on purpose: the error holds the value too
    assert result["status"] == "failed"
    assert result["outputs"]["length"] == len(value)  # the kernel had the value itself
    assert result["outputs"]["password"] == MASK
    assert result["parameters"]["password"] == {"$secret": block}
    run_id = result["flow_run_id"]
    if where == "local":
        stored = stored_files(tmp_path / "store")
    else:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/run-notebook/{run_id}/")
        stored = {
            o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listed["Contents"]
        }
    assert any(name.endswith("credentials.txt") for name in stored)  # a file it wrote
    assert any(name.endswith("notebook.html") for name in stored)
    everything = {
        **{name: data.decode(errors="replace") for name, data in stored.items()},
        "prefect": asyncio.run(everything_prefect_has(run_id)),
        "result": json.dumps(result),
        "error": str(state.message),
    }
    forms = {value, repr(value)[1:-1], json.dumps(value)[1:-1]}
    found = {name: form for name, text in everything.items() for form in forms if form in text}
    assert found == {}
    executed = next(data for name, data in stored.items() if name.endswith("/notebook.ipynb"))
    notebook = nbformat.reads(executed.decode(), as_version=4)
    injected = next(
        c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])
    )
    assert f'password = "{MASK}"' in injected.source
    assert notebook.metadata.papermill.parameters["password"] == {"$secret": block}
    assert MASK in everything["prefect"]  # the cell's stdout, logged masked
    assert "refused" in result["error"]["message"] and MASK in result["error"]["message"]


@pytest.mark.usefixtures("prefect_server")
def test_a_declared_secret_without_a_block_is_left_out_of_the_parameters_used(
    tmp_path: Path,
) -> None:
    """Its literal default, sent back by a retry from the UI, would be refused as a value."""
    state = run_flow(notebook=str(SECRET_NOTEBOOK), parameters={"user": "x"}, store=str(tmp_path))
    result = state_outcome(state)
    assert result.success and result.parameters_used == {"user": "x", "fail": False}


@pytest.mark.usefixtures("prefect_server")
def test_a_declared_secret_sent_as_a_value_is_refused(tmp_path: Path) -> None:
    state = run_flow(
        notebook=str(SECRET_NOTEBOOK), parameters={"password": "hunter22"}, store=str(tmp_path)
    )
    error = state_outcome(state)
    assert isinstance(error, SecretParameterError)
    assert "declared secret" in str(error) and "-s password BLOCK" in str(error)
    assert "\n" not in str(error)


@pytest.mark.usefixtures("prefect_server")
def test_a_missing_secret_block_is_one_line_and_no_kernel_runs(tmp_path: Path) -> None:
    state = run_flow(
        notebook=str(SECRET_NOTEBOOK),
        parameters={"password": {"$secret": "no-such-block"}},
        store=str(tmp_path),
    )
    error = state_outcome(state)
    assert isinstance(error, SecretParameterError) and error.block == "no-such-block"
    assert "does not exist" in str(error) and "\n" not in str(error)
    assert not list(tmp_path.rglob("notebook.ipynb"))
