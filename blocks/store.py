"""Where artefacts go: a local folder or S3-compatible storage, behind one small seam.

We write no S3 client of our own: S3 goes through prefect-aws's ``S3Bucket`` and
local folders through Prefect's ``LocalFileSystem``. ``ArtefactStore`` only adds
what a run needs on top: safe keys, stable URIs and browser links.

A store is named by a *spec*, the ``store`` parameter of a run:

- ``None`` or ``""``: ``$NBJOBS_STORE`` if set, else the embedded default, the local
  folder ``$NBJOBS_HOME/artefacts`` (``~/.nbjobs/artefacts``);
- ``s3://bucket/prefix``: S3, honouring boto3's ``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto...) and its usual credential chain;
- a path (``/data/runs``, ``./runs``, ``~/runs``, ``file:///data/runs``): a local folder;
- ``s3-bucket/NAME`` or ``local-file-system/NAME`` or a bare ``NAME``: a saved block.

Example:
    >>> store = open_store("./artefacts")
    >>> store.put_bytes("run-notebook/1234/result.json", b"{}")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect.filesystems import LocalFileSystem
from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters
from pydantic import ValidationError

from notebook_jobs.blocks.exceptions import ArtefactStoreError
from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.blocks.local_links import files_url, signed_link
from notebook_jobs.blocks.s3 import parse_s3_uri
from notebook_jobs.blocks.settings import (
    BARE_BLOCK_NAME,
    BLOCK_SPEC,
    nbjobs_home,
    settings,
)

PRESIGNED_LINK_EXPIRY_SECONDS = 7 * 24 * 3600


def default_store_path() -> Path:
    """The embedded default artefact folder: ``$NBJOBS_HOME/artefacts`` (``~/.nbjobs``)."""
    return (nbjobs_home() / "artefacts").resolve()


def _io(filesystem: LocalFileSystem | S3Bucket) -> Any:
    # Prefect's async_dispatch picks async when called inside an async flow or task;
    # we run these calls in worker threads and ask for the sync versions explicitly
    # with ``_sync=True``, a keyword the type stubs do not declare.
    return filesystem


class ArtefactStore:
    """A place artefacts are written to, read from and linked to.

    A plain class on purpose: Prefect walks dataclasses passed to tasks, and the
    block inside holds credentials that need not be copied around.

    Attributes:
        spec: What the user asked for (a URI, path or block name); never a secret.
        filesystem: The Prefect filesystem block doing the I/O.
    """

    def __init__(self, spec: str, filesystem: LocalFileSystem | S3Bucket) -> None:
        self.spec = spec
        self.filesystem = filesystem

    def __repr__(self) -> str:
        return f"ArtefactStore({self.root!r})"

    @property
    def is_local(self) -> bool:
        """True for a local folder."""
        return isinstance(self.filesystem, LocalFileSystem)

    @property
    def root(self) -> str:
        """The store's base URI: an absolute folder or ``s3://bucket/prefix``."""
        fs = self.filesystem
        if isinstance(fs, LocalFileSystem):
            return str(Path(fs.basepath or ".").expanduser().resolve())
        folder = str(fs.bucket_folder or "").strip("/")
        return f"s3://{fs.bucket_name}/{folder}".rstrip("/")

    def uri(self, key: str) -> str:
        """The stable URI of ``key`` (a file path for local stores, ``s3://`` for S3)."""
        return f"{self.root}/{safe_key(key)}"

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key``; return its URI."""
        key = safe_key(key)
        try:
            _io(self.filesystem).write_path(key, data, _sync=True)
        except Exception as error:
            raise ArtefactStoreError(
                f"could not write {key} to {self.root}: {type(error).__name__}: {error}",
                store=self.spec,
            ) from error
        return self.uri(key)

    def put_file(self, key: str, path: Path) -> str:
        """Upload the local file ``path`` at ``key``; return its URI."""
        key = safe_key(key)
        fs = self.filesystem
        try:
            if isinstance(fs, S3Bucket):
                _io(fs).upload_from_path(str(path), key, _sync=True)
            else:
                _io(fs).write_path(key, path.read_bytes(), _sync=True)
        except Exception as error:
            raise ArtefactStoreError(
                f"could not upload {key} to {self.root}: {type(error).__name__}: {error}",
                store=self.spec,
            ) from error
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        """Read the object at ``key``."""
        key = safe_key(key)
        try:
            data: bytes = _io(self.filesystem).read_path(key, _sync=True)
        except Exception as error:
            raise ArtefactStoreError(
                f"could not read {key} from {self.root}: {type(error).__name__}: {error}",
                store=self.spec,
            ) from error
        return data

    def delete_folder(self, key: str) -> int:
        """Delete everything under ``key`` (a run's folder); how many files went."""
        key = safe_key(key)
        fs = self.filesystem
        try:
            if isinstance(fs, LocalFileSystem):
                folder = Path(self.uri(key))
                count = sum(1 for path in folder.rglob("*") if path.is_file())
                if folder.exists():
                    shutil.rmtree(folder)
                return count
            folder_key = "/".join(p for p in (str(fs.bucket_folder or "").strip("/"), key) if p)
            client = fs.credentials.get_s3_client()
            count = 0
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=fs.bucket_name, Prefix=folder_key + "/"
            )
            for page in pages:
                objects = [{"Key": found["Key"]} for found in page.get("Contents", [])]
                if objects:
                    answer = client.delete_objects(
                        Bucket=fs.bucket_name, Delete={"Objects": objects}
                    )
                    if answer.get("Errors"):  # reported, not raised, by S3
                        first = answer["Errors"][0]
                        raise RuntimeError(f"{first.get('Key')}: {first.get('Message')}")
                    count += len(objects)
            return count
        except Exception as error:
            raise ArtefactStoreError(
                f"could not delete {key} from {self.root}: {type(error).__name__}: {error}",
                store=self.spec,
            ) from error

    def link(self, key: str) -> str:
        """A link a browser can open: presigned HTTPS for S3; for folders, a signed
        link to the file server of ``nbjobs serve --files-port`` where one serves the
        runs (``local_links.files_url``), else ``file://``.

        Falls back to the ``s3://`` URI when the credentials cannot presign.
        """
        key = safe_key(key)
        fs = self.filesystem
        if isinstance(fs, LocalFileSystem):
            served = files_url()
            if served:
                return signed_link(served, Path(self.uri(key)))
            return Path(self.uri(key)).as_uri()
        object_key = "/".join(p for p in (str(fs.bucket_folder or "").strip("/"), key) if p)
        try:
            client = fs.credentials.get_s3_client()
            url: str = client.generate_presigned_url(
                "get_object",
                Params={"Bucket": fs.bucket_name, "Key": object_key},
                ExpiresIn=PRESIGNED_LINK_EXPIRY_SECONDS,
            )
        except Exception:
            return self.uri(key)
        return url


def _s3_bucket(bucket: str, folder: str) -> S3Bucket:
    # endpoint_url=None lets boto3 apply AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself.
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    params = AwsClientParameters(endpoint_url=endpoint) if endpoint else AwsClientParameters()
    credentials = AwsCredentials(aws_client_parameters=params)
    return S3Bucket(bucket_name=bucket, bucket_folder=folder, credentials=credentials)


def validation_error(error: BaseException) -> str | None:
    """What a saved block's invalid values are, if that is why it could not be loaded.

    Prefect wraps the ``ValidationError`` of a block saved with values its class cannot
    hold in a ``RuntimeError``; a ``ValidationError`` is also a ``ValueError``, which is
    what "no such block" raises. Either way, this is not "no such block".
    """
    cause = error if isinstance(error, ValidationError) else error.__cause__
    if not isinstance(cause, ValidationError):
        return None
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'block'}: {e['msg']}" for e in cause.errors()
    )


def _load_block(spec: str) -> LocalFileSystem | S3Bucket:
    match = BLOCK_SPEC.match(spec)
    candidates: list[tuple[type[Any], str]]
    if match:
        kind, name = match.groups()
        cls: type[Any] = S3Bucket if kind == "s3-bucket" else LocalFileSystem
        candidates = [(cls, name)]
    else:
        candidates = [(S3Bucket, spec), (LocalFileSystem, spec)]
    for cls, name in candidates:
        try:
            block = cls.load(name, _sync=True)
        except (ValidationError, RuntimeError) as error:
            invalid = validation_error(error)
            if invalid is None:
                raise ArtefactStoreError(
                    f"could not load block {spec!r}: {type(error).__name__}: {error}", store=spec
                ) from error
            raise ArtefactStoreError(
                f"the {cls.__name__} block {name!r} is saved with values it cannot hold: {invalid}",
                store=spec,
            ) from error
        except ValueError:  # Prefect's "Unable to find block document named ..."
            continue
        except Exception as error:
            raise ArtefactStoreError(
                f"could not load block {spec!r}: {type(error).__name__}: {error}", store=spec
            ) from error
        return block  # type: ignore[no-any-return]
    raise ArtefactStoreError(
        f"no S3Bucket or LocalFileSystem block named {spec!r}; "
        f"write a local folder as ./{spec}, or S3 as s3://bucket/prefix",
        store=spec,
    )


def open_store(spec: str | None = None) -> ArtefactStore:
    """Resolve a store spec (URI, path or block name) into an ``ArtefactStore``.

    Args:
        spec: See the module docstring; ``None`` means the embedded default.

    Returns:
        The store; nothing is contacted yet.

    Raises:
        ArtefactStoreError: The spec names no block, or an unsupported scheme.
    """
    spec = (spec or settings().store or "").strip()
    if not spec:
        path = default_store_path()
        return ArtefactStore(str(path), LocalFileSystem(basepath=str(path)))
    if spec.startswith("s3://"):
        bucket, folder = parse_s3_uri(spec)
        return ArtefactStore(spec, _s3_bucket(bucket, folder.strip("/")))
    if spec.startswith("file://"):
        path = Path(urlparse(spec).path)
        return ArtefactStore(spec, LocalFileSystem(basepath=str(path.resolve())))
    if "://" in spec:
        raise ArtefactStoreError(
            f"unsupported store {spec!r}: use s3://bucket/prefix, a local path or a block name",
            store=spec,
        )
    if BLOCK_SPEC.match(spec) or BARE_BLOCK_NAME.match(spec):
        return ArtefactStore(spec, _load_block(spec))
    path = Path(spec).expanduser().resolve()
    return ArtefactStore(spec, LocalFileSystem(basepath=str(path)))


__all__ = ["ArtefactStore", "default_store_path", "open_store"]
