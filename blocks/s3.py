"""Single objects on S3 by URI, with boto3 alone: what the engine reads (notebooks, input
files) and ``nbjobs run`` writes (an ``s3://`` OUTPUT), where Prefect may not be installed
(a Slurm node) or is not imported (the command line).

A run's artefact store is ``blocks/store.py``, through prefect-aws's ``S3Bucket``; both use
boto3's credential chain and its ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO, Ceph,
moto...).

Example:
    >>> parse_s3_uri("s3://notebooks/daily/report.ipynb")
    ('notebooks', 'daily/report.ipynb')
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from notebook_jobs.blocks.exceptions import ArtefactStoreError, RequestTooLargeError


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/key`` into ``("bucket", "some/key")``.

    Args:
        uri: An ``s3://bucket/key`` URI.

    Returns:
        The bucket and the key (``""`` for the bucket itself).

    Raises:
        ArtefactStoreError: ``uri`` is not an ``s3://`` URI with a bucket.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ArtefactStoreError(f"not an s3:// URI: {uri!r}", store=uri)
    return parsed.netloc, parsed.path.lstrip("/")


def _client() -> Any:
    import boto3  # 0.3 s: only for a run that reads or writes S3

    # no endpoint_url: boto3 applies AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself
    return boto3.session.Session().client("s3")


def read_s3_object(uri: str, max_bytes: int | None = None) -> bytes:
    """Read one object named by an ``s3://bucket/key`` URI.

    Args:
        uri: The object's URI.
        max_bytes: Refuse an object larger than this (a notebook's limit), if given.

    Returns:
        The object's bytes.

    Raises:
        RequestTooLargeError: The object is over ``max_bytes`` (asked before reading it).
    """
    bucket, key = parse_s3_uri(uri)
    client = _client()
    if max_bytes is not None:
        size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if size > max_bytes:
            raise RequestTooLargeError(f"the notebook {uri}", size, max_bytes)
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def write_s3_object(uri: str, data: bytes) -> None:
    """Write one object named by an ``s3://bucket/key`` URI (``nbjobs run``'s OUTPUT).

    Args:
        uri: The object's URI.
        data: Its new content, written whole.
    """
    bucket, key = parse_s3_uri(uri)
    _client().put_object(Bucket=bucket, Key=key, Body=data)
