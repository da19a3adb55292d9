from __future__ import annotations

import pickle
from pathlib import Path

import httpx
import pytest

from notebook_jobs.blocks.exceptions import ArtefactStoreError, NotebookExecutionError
from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.blocks.store import default_store_path, open_store


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("run/1", "out.csv"), "run/1/out.csv"),
        (("run/1", "../../etc/passwd"), "run/1/etc/passwd"),
        (("run/1", "/abs/path.txt"), "run/1/abs/path.txt"),
        (("run/1", "a/./b/../c"), "run/1/a/b/c"),
        (("run/1", "we ird$name?.png"), "run/1/we_ird_name_.png"),
        (("run/1", "..\\..\\win.txt"), "run/1/win.txt"),
    ],
)
def test_safe_key_never_leaves_its_prefix(parts: tuple[str, ...], expected: str) -> None:
    assert safe_key(*parts) == expected


def test_safe_key_refuses_an_empty_key() -> None:
    with pytest.raises(ArtefactStoreError):
        safe_key("..", "/")


def test_a_path_spec_is_a_local_folder(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "arts"))
    uri = store.put_bytes("run-notebook/1/result.json", b"{}")
    assert uri == str(tmp_path / "arts" / "run-notebook/1/result.json")
    assert store.get_bytes("run-notebook/1/result.json") == b"{}"
    assert store.link("run-notebook/1/result.json").startswith("file://")


def test_the_default_store_is_a_local_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NBJOBS_STORE", raising=False)
    store = open_store(None)
    assert store.is_local and store.root == str(default_store_path())


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(ArtefactStoreError, match="unsupported store"):
        open_store("ftp://host/x")


def test_s3_store_over_http(bucket: str, s3: object) -> None:
    store = open_store(f"s3://{bucket}/team/a")
    uri = store.put_bytes("run-notebook/1/result.json", b'{"ok": true}')
    assert uri == f"s3://{bucket}/team/a/run-notebook/1/result.json"
    assert store.get_bytes("run-notebook/1/result.json") == b'{"ok": true}'
    link = store.link("run-notebook/1/result.json")
    assert link.startswith("http://127.0.0.1:") and "Signature" in link
    assert httpx.get(link).json() == {"ok": True}


def test_an_unreachable_s3_store_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = open_store("s3://nowhere/x")
    with pytest.raises(ArtefactStoreError, match="could not write"):
        store.put_bytes("a.txt", b"a")


def test_run_errors_keep_their_facts_through_pickling() -> None:
    error = NotebookExecutionError(
        "ValueError", "bad", cell_index=3, traceback=["t"], result={"status": "failed"}
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.ename, copy.evalue, copy.cell_index, copy.result) == (
        "ValueError",
        "bad",
        3,
        {"status": "failed"},
    )
    assert str(copy) == "cell 3: ValueError: bad"


@pytest.mark.usefixtures("prefect_server")
def test_a_block_saved_with_values_it_cannot_hold_is_not_called_missing(tmp_path: Path) -> None:
    """A corrupt saved block used to read as "no block named X"."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentUpdate
    from prefect_aws import S3Bucket

    block_id = S3Bucket(bucket_name="reports").save("corrupt-store", overwrite=True)

    async def corrupt() -> None:
        async with get_client() as client:
            await client.update_block_document(
                block_id,
                BlockDocumentUpdate(
                    data={"basepath": {"not": "a path"}}, merge_existing_data=False
                ),
            )

    asyncio.run(corrupt())
    with pytest.raises(
        ArtefactStoreError,
        match="'corrupt-store' is saved with values it cannot hold: bucket_name: Field required",
    ):
        open_store("s3-bucket/corrupt-store")
    with pytest.raises(
        ArtefactStoreError, match="no S3Bucket or LocalFileSystem block named 'absent-store'"
    ):
        open_store("absent-store")


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_a_runs_folder_is_deleted_and_nothing_beside_it(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    spec = (
        str(tmp_path / "store")
        if kind == "folder"
        else f"s3://{request.getfixturevalue('bucket')}/runs"
    )
    store = open_store(spec)
    for key in (
        "run-notebook/a/notebook.ipynb",
        "run-notebook/a/files/x.csv",
        "run-notebook/ab/keep",
    ):
        store.put_bytes(key, b"{}")
    assert store.delete_folder("run-notebook/a") == 2
    assert store.get_bytes("run-notebook/ab/keep") == b"{}"  # a prefix of its name: kept
    with pytest.raises(ArtefactStoreError):
        store.get_bytes("run-notebook/a/notebook.ipynb")
    # JupyterLab's delete with delete_stored_outputs: the folder of the run's id, in
    # the run's store (every attempt's), whatever its result.json says
    pytest.importorskip("jupyter_scheduler", reason="notebook-jobs[jupyterlab] is not installed")
    from notebook_jobs.deployments.lab.files import delete_stored

    store.put_bytes("run-notebook/ab/attempt-2/notebook.ipynb", b"{}")
    assert delete_stored({"id": "ab", "parameters": {"store": spec}}) == 2
    with pytest.raises(ArtefactStoreError):
        store.get_bytes("run-notebook/ab/keep")
