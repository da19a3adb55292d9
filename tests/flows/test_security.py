"""Distinctive secrets never reach logs, artifacts, result.json or stored notebooks."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.conftest import EXAMPLES, run_flow, state_outcome
from tests.flows.test_hostile import HOSTILE

pytestmark = pytest.mark.usefixtures("prefect_server")


async def everything_prefect_has(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        run = await client.read_flow_run(uuid.UUID(flow_run_id))
    return "\n".join(
        [line.message for line in logs]
        + [json.dumps(a.data) + (a.description or "") for a in artifacts]
        + [json.dumps(run.parameters), run.name, str(run.state.message if run.state else "")]
    )


def test_block_and_prefect_secrets_appear_nowhere(
    bucket: str, s3: Any, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    block_secret = f"BLOCK-SECRET-{uuid.uuid4().hex}"
    prefect_key = f"PREFECT-KEY-{uuid.uuid4().hex}"
    monkeypatch.setenv(
        "PREFECT_API_KEY", prefect_key
    )  # ignored by the local server, seen by the kernel?
    S3Bucket(
        bucket_name=bucket,
        credentials=AwsCredentials(
            aws_access_key_id="AKIATEST",
            aws_secret_access_key=block_secret,
            aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint),
        ),
    ).save(f"secret-store-{bucket}", overwrite=True)
    for notebook in (HOSTILE / "dumps_env.ipynb", EXAMPLES / "report.ipynb"):
        state = run_flow(notebook=str(notebook), store=f"secret-store-{bucket}")
        result = state_outcome(state)
        everything = [
            stored.decode(errors="replace")
            for stored in (
                s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                for o in s3.list_objects_v2(
                    Bucket=bucket, Prefix=f"run-notebook/{result.flow_run_id}/"
                )["Contents"]
            )
        ]
        everything.append(asyncio.run(everything_prefect_has(result.flow_run_id)))
        everything.append(result.model_dump_json())
        for text in everything:
            assert block_secret not in text and prefect_key not in text
    dumped = (
        s3.get_object(
            Bucket=bucket,
            Key=f"run-notebook/{state_outcome(run_flow(notebook=str(HOSTILE / 'dumps_env.ipynb'), store=f'secret-store-{bucket}')).flow_run_id}/notebook.ipynb",
        )["Body"]
        .read()
        .decode()
    )
    assert "NBJOBS_HOME =" in dumped  # the environment was printed; only the secrets were kept out
