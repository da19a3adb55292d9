"""run-notebook with ``cluster=``: real jobs on a real single-node Slurm cluster.

The cluster is Debian's Slurm started by tests/services/slurm.sh; artefacts go to
S3 over HTTP (moto). Everything after the execute step is the local run's code.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest

from notebook_jobs.blocks.exceptions import (
    MemoryLimitError,
    NotebookExecutionError,
    SlurmJobError,
    SlurmSubmissionError,
)
from notebook_jobs.blocks.slurm import JOB_HEADROOM_MIB, SlurmCluster
from notebook_jobs.tasks.engine.slurm.commands import JobStatus, SlurmCommands
from notebook_jobs.tasks.engine.slurm.watch import outcome_report
from notebook_jobs.tasks.engine.staged import stage
from notebook_jobs.tasks.models import ExecutionReport, NotebookRequest, NotebookResult
from notebook_jobs.tasks.slurm_executor import SlurmExecutor
from tests.conftest import DATA, EXAMPLES, run_flow, state_outcome

pytestmark = pytest.mark.usefixtures("prefect_server")


def stored(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_outcome_mapping_is_pure() -> None:
    now = "2026-11-21T00:00:00Z"
    failed = ExecutionReport.model_validate(
        {
            "status": "failed",
            "kernel": "python3",
            "started_at": now,
            "finished_at": now,
            "error": {"name": "ValueError", "message": "x", "cell_index": 3},
        }
    )
    assert (
        outcome_report(JobStatus("7", "FAILED", 1), failed, kernel="python3", stderr_tail="")
        is failed
    )
    timeout = outcome_report(JobStatus("7", "TIMEOUT", 0), None, kernel="python3", stderr_tail="")
    assert timeout.status == "timed_out" and timeout.error is not None
    assert timeout.error.message == "Slurm job 7 ended TIMEOUT (exit code 0)"
    died = outcome_report(
        JobStatus("7", "FAILED", 1),
        None,
        kernel="python3",
        stderr_tail="ModuleNotFoundError: tasks",
    )
    assert died.error is not None and died.error.message.endswith(": ModuleNotFoundError: tasks")


@pytest.mark.usefixtures("no_blocking_calls")
def test_a_parameterised_notebook_runs_as_a_job_with_input_files(
    slurm_cluster: str, bucket: str, s3: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    state = run_flow(
        notebook=str(DATA / "reads_input.ipynb"),
        parameters={"path": "data.csv"},
        input_files=[str(data)],
        cluster=slurm_cluster,
        store=f"s3://{bucket}/runs",
    )
    assert state.is_completed(), state.message
    result: NotebookResult = state_outcome(state)
    assert result.slurm is not None
    assert (result.slurm.state, result.slurm.exit_code) == ("COMPLETED", 0)
    assert result.outputs["content"] == "a,b\n1,2\n"  # the input file reached the job
    assert result.outputs["job_id"] == result.slurm.job_id  # it really ran as that Slurm job
    prefix = f"runs/run-notebook/{result.flow_run_id}"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    job = result.slurm.job_id
    assert {
        f"{prefix}/{n}"
        for n in (
            "input.ipynb",
            "notebook.ipynb",
            "notebook.html",
            "result.json",
            f"slurm/slurm-{job}.out",
            f"slurm/slurm-{job}.err",
            "slurm/job.zip",
        )
    } <= keys
    assert f"nbjobs: job {job} on" in stored(s3, bucket, f"{prefix}/slurm/slurm-{job}.err").decode()
    assert json.loads(stored(s3, bucket, f"{prefix}/result.json"))["slurm"]["job_id"] == job


def test_a_raising_notebook_fails_with_its_partial_notebook_and_slurm_state(
    slurm_cluster: str, bucket: str, s3: Any
) -> None:
    state = run_flow(
        notebook=str(DATA / "raises.ipynb"), cluster=slurm_cluster, store=f"s3://{bucket}/runs"
    )
    assert state.is_failed() and "cell 3: ValueError: bad value 42" in state.message
    error = state_outcome(state)
    assert isinstance(error, NotebookExecutionError)  # the notebook's own error, not the cluster's
    result = NotebookResult.model_validate(error.result)
    assert result.slurm is not None and (result.slurm.state, result.slurm.exit_code) == (
        "FAILED",
        1,
    )
    partial = nbformat.reads(
        stored(s3, bucket, f"runs/run-notebook/{result.flow_run_id}/notebook.ipynb").decode(),
        as_version=4,
    )
    assert partial.cells[3].outputs[0]["text"] == "cell 2 ran\n"  # after papermill's banner


@pytest.mark.timeout(400)
def test_a_job_past_its_time_limit_ends_timeout(
    slurm_partition: str, prefect_server: str, tmp_path: Path
) -> None:
    name = "test-cluster-one-minute"
    SlurmCluster(
        work_dir=str(tmp_path / "shared"),
        partition=slurm_partition,
        time_limit="1",
        poll_interval_seconds=0.5,
        max_poll_interval_seconds=3,
    ).save(name, overwrite=True)
    state = run_flow(
        notebook=str(DATA / "sleeps.ipynb"),
        parameters={"seconds": 600},
        cluster=name,
        store=str(tmp_path / "store"),
    )
    assert state.is_failed()
    error = state_outcome(state)
    assert isinstance(error, SlurmJobError)
    assert (error.state, error.job_id) == ("TIMEOUT", error.result["slurm"]["job_id"])  # type: ignore[index]
    assert "ended TIMEOUT" in state.message and "while running cell 2" in state.message
    result = NotebookResult.model_validate(error.result)
    assert result.status == "timed_out"
    partial = nbformat.read(Path(result.artefacts.notebook or ""), as_version=4)
    assert partial.cells[2].outputs[0]["text"] == "started\n"  # written by the job on SIGTERM


@pytest.mark.usefixtures("no_blocking_calls")
def test_cancelling_the_flow_run_cancels_the_job(slurm_cluster: str, tmp_path: Path) -> None:
    from notebook_jobs.flows.run_notebook import run_notebook

    commands = SlurmCommands()

    async def run_and_cancel() -> tuple[str, Any]:
        flow = asyncio.ensure_future(
            run_notebook(
                notebook=str(DATA / "sleeps.ipynb"),
                parameters={"seconds": 600},
                cluster=slurm_cluster,
                store=str(tmp_path),
                return_state=True,
            )
        )
        deadline = time.monotonic() + 60
        job_id = ""
        while time.monotonic() < deadline and not job_id:
            await asyncio.sleep(0.5)
            queued = subprocess.run(
                ["squeue", "-h", "-o", "%i|%T|%j"], capture_output=True, text=True
            ).stdout
            running = [
                line.split("|")[0]
                for line in queued.splitlines()
                if "|RUNNING|nbjobs-sleeps" in line
            ]
            job_id = running[0] if running else ""
        assert job_id, "the job never started"
        # cancelled in cell 2's sleep, once the job says it started it
        shared = Path(cluster_of(slurm_cluster).work_dir)
        while time.monotonic() < deadline + 60 and not any(
            '"phase": "start", "index": 2' in path.read_text()
            for path in shared.glob("runs/*/events.jsonl")
        ):
            await asyncio.sleep(0.3)
        flow.cancel()
        return job_id, await flow

    job_id, state = asyncio.run(run_and_cancel())
    # the run ends Cancelled with what ran stored, as a local run does (it used to vanish)
    assert state.is_cancelled(), state
    result = NotebookResult.model_validate(state_outcome(state))
    assert result.status == "cancelled" and result.slurm is not None
    assert result.slurm.job_id == job_id
    partial = nbformat.read(Path(result.artefacts.notebook or ""), as_version=4)
    assert partial.cells[2].outputs[0]["text"] == "started\n"  # written by the job on SIGTERM
    status = commands.status(job_id)
    assert status is not None and status.state == "CANCELLED"

    def queued() -> list[str]:
        return subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True
        ).stdout.split()

    deadline = time.monotonic() + 30  # a cancelled job is COMPLETING for a moment
    while job_id in queued() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job_id not in queued()


def test_an_unknown_kernel_on_the_node_is_reported(slurm_cluster: str, tmp_path: Path) -> None:
    state = run_flow(
        notebook=str(EXAMPLES / "report.ipynb"),
        kernel="no-such-kernel",
        cluster=slurm_cluster,
        store=str(tmp_path),
    )
    assert state.is_failed()
    assert "UnknownKernelError: kernel 'no-such-kernel' is not installed" in state.message


def test_a_job_gets_the_runs_context_in_its_notebook(slurm_cluster: str, tmp_path: Path) -> None:
    """``# nbjobs: logical_date`` and the rest are injected before the job is submitted."""
    state = run_flow(
        notebook=str(DATA / "series.ipynb"), cluster=slurm_cluster, store=str(tmp_path)
    )
    assert state.is_completed(), state.message
    result = state_outcome(state)
    assert result.slurm is not None and result.context is not None
    assert result.outputs["report_date"] == result.context.logical_date
    assert result.outputs["due"] == result.context.scheduled_time
    assert result.outputs["run_id"] == result.flow_run_id


def test_an_unreachable_cluster_is_a_clear_error(
    prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SlurmCluster(work_dir=str(tmp_path / "shared")).save("test-cluster-nowhere", overwrite=True)
    monkeypatch.setenv(
        "PATH", "/nonexistent"
    )  # no sbatch here: as on a machine that is no submit host
    state = run_flow(
        notebook=str(EXAMPLES / "report.ipynb"), cluster="test-cluster-nowhere", store=str(tmp_path)
    )
    assert state.is_failed() and "SlurmSubmissionError: sbatch not found" in state.message


def test_progress_shows_the_job(
    slurm_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import notebook_jobs.tasks.progress_artifact as progress_artifact

    # made at once, however fast the job (a run under a second has none)
    monkeypatch.setattr(progress_artifact, "SHOWN_AFTER_SECONDS", 0.0)
    shown: list[tuple[float, str | None]] = []
    real_create = progress_artifact.acreate_progress_artifact
    real_update = progress_artifact.aupdate_progress_artifact

    async def create(
        progress: float, key: str | None = None, description: str | None = None
    ) -> Any:
        shown.append((progress, description))
        return await real_create(progress, key=key, description=description)

    async def update(artifact_id: Any, progress: float, description: str | None = None) -> Any:
        shown.append((progress, description))
        return await real_update(artifact_id, progress, description=description)

    monkeypatch.setattr(progress_artifact, "acreate_progress_artifact", create)
    monkeypatch.setattr(progress_artifact, "aupdate_progress_artifact", update)
    state = run_flow(
        notebook=str(EXAMPLES / "report.ipynb"), cluster=slurm_cluster, store=str(tmp_path)
    )
    result: NotebookResult = state_outcome(state)

    async def artifacts() -> dict[str, Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[result.flow_run_id])
                )
            )
        return {a.key: a for a in found}

    # while it went: what the job was doing (the newest value whenever the API was free)
    assert shown and all(d and d.startswith("report.ipynb: ") for _, d in shown), shown
    # once it ended: gone (the run's state and summary say how it ended)
    assert "report-progress" not in asyncio.run(artifacts())
    assert httpx is not None


class NodeFailsOnce(SlurmCommands):
    """A seam: the first job 'fails its node'; the resubmission runs the real job script."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, script_path: str) -> str:
        self.submitted.append(script_path)
        if len(self.submitted) == 1:
            return "101"
        subprocess.run(
            ["bash", script_path],
            cwd=Path(script_path).parent,
            check=False,
            env={**__import__("os").environ, "SLURM_JOB_ID": "102"},
        )
        return "102"

    def status(self, job_id: str) -> JobStatus | None:
        return JobStatus(job_id, "NODE_FAIL" if job_id == "101" else "COMPLETED", 0, None, "vm")

    def cancel(self, job_id: str) -> None:
        raise AssertionError("nothing to cancel")


def one_job(notebook: str, commands: SlurmCommands, folder: Path) -> Any:
    """The execute step alone, through a SlurmExecutor with these commands."""
    cluster = SlurmCluster(work_dir=str(folder), poll_interval_seconds=0.1)
    staged = stage(NotebookRequest(notebook=notebook), folder / "job", check_kernel=False)
    return asyncio.run(SlurmExecutor(cluster, commands).execute(staged))


def test_node_failure_is_resubmitted_and_a_notebook_error_is_not(tmp_path: Path) -> None:
    commands = NodeFailsOnce()
    outcome = one_job(str(EXAMPLES / "report.ipynb"), commands, tmp_path / "a")
    assert len(commands.submitted) == 2
    assert outcome.slurm is not None
    assert (outcome.slurm.state, outcome.slurm.attempts, outcome.slurm.job_id) == (
        "COMPLETED",
        2,
        "102",
    )
    assert outcome.report.success and outcome.report.outputs["total"] == 385

    commands = NodeFailsOnce()
    commands.submit("/dev/null")  # spend the node failure: the next submission runs the notebook
    outcome = one_job(str(DATA / "raises.ipynb"), commands, tmp_path / "b")
    assert len(commands.submitted) == 2  # the notebook's own error was not resubmitted
    assert outcome.report.status == "failed" and outcome.slurm.attempts == 1


def test_the_command_line_runs_on_the_cluster(
    slurm_cluster: str, prefect_server: str, tmp_path: Path
) -> None:
    import os
    import sys

    data = tmp_path / "data.csv"
    data.write_text("from the CLI\n")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "nbjobs"),
            "run",
            str(DATA / "reads_input.ipynb"),
            "--cluster",
            slurm_cluster,
            "--input-file",
            str(data),
            "--store",
            str(tmp_path / "store"),
            "--json",
        ],
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert (
        document["slurm"]["state"] == "COMPLETED"
        and document["outputs"]["content"] == "from the CLI\n"
    )


def cluster_of(name: str) -> SlurmCluster:
    return SlurmCluster.load(name, _sync=True)  # type: ignore[no-any-return]


class StatusFailsThrice(SlurmCommands):
    """sacct and squeue unreachable for three polls in a row, then answering again."""

    def __init__(self) -> None:
        self.failures = 0

    def status(self, job_id: str) -> JobStatus | None:
        if self.failures < 3:
            self.failures += 1
            raise SlurmSubmissionError("sacct did not answer in 60 s: is slurmctld reachable?")
        return super().status(job_id)

    def cancel(self, job_id: str) -> None:
        raise AssertionError(f"a healthy job {job_id} was cancelled")


def test_status_failures_and_progress_errors_leave_a_healthy_job_alone(
    slurm_cluster: str, tmp_path: Path
) -> None:
    """Any error while following the job used to scancel it."""
    commands = StatusFailsThrice()
    staged = stage(
        NotebookRequest(notebook=str(EXAMPLES / "report.ipynb")),
        Path(cluster_of(slurm_cluster).work_dir) / "runs" / "flaky",
        check_kernel=False,
    )

    def progress_fails(event: Any) -> None:
        raise RuntimeError("the Prefect API answered 503")  # as an artifact update might

    outcome = asyncio.run(
        SlurmExecutor(cluster_of(slurm_cluster), commands).execute(staged, on_event=progress_fails)
    )
    assert commands.failures == 3
    assert outcome.slurm.state == "COMPLETED" and outcome.report.outputs["total"] == 385


class NoAccounting(SlurmCommands):
    """A cluster whose accounting never lists a job (lagging, or off), nor its queue."""

    def status(self, job_id: str) -> JobStatus | None:
        return None


def test_a_job_accounting_does_not_know_is_judged_by_its_own_report(
    slurm_cluster: str, tmp_path: Path
) -> None:
    """It used to end UNKNOWN, and fail the run, after 30 polls."""
    cluster = cluster_of(slurm_cluster)
    staged = stage(
        NotebookRequest(notebook=str(DATA / "raises.ipynb")),
        Path(cluster.work_dir) / "runs" / "unknown",
        check_kernel=False,
    )
    outcome = asyncio.run(SlurmExecutor(cluster, NoAccounting()).execute(staged))
    assert outcome.slurm.state == "FAILED"  # the notebook's own error, from its report
    assert outcome.report.status == "failed" and outcome.report.error.name == "ValueError"


def test_a_secret_parameter_reaches_the_job_and_no_stored_file(
    slurm_cluster: str, bucket: str, s3: Any
) -> None:
    """The job reads the value from a 0600 file it deletes; the job's zip holds no value."""
    import io
    import uuid
    import zipfile

    from prefect.blocks.system import Secret

    value, block = f"slurm-secret-{uuid.uuid4().hex}", f"slurm-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(block)
    state = run_flow(
        notebook=str(DATA / "secret.ipynb"),
        parameters={"password": {"$secret": block}},
        cluster=slurm_cluster,
        store=f"s3://{bucket}/runs",
    )
    assert state.is_completed(), state.message
    result: NotebookResult = state_outcome(state)
    assert result.outputs["length"] == len(value)
    prefix = f"runs/run-notebook/{result.flow_run_id}"
    objects = {
        o["Key"]: stored(s3, bucket, o["Key"])
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    }
    archive = zipfile.ZipFile(io.BytesIO(objects[f"{prefix}/slurm/job.zip"]))
    inside = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    assert "secrets.json" not in inside and "work/credentials.txt" in inside
    everything = {**objects, **inside}
    assert [name for name, data in everything.items() if value.encode() in data] == []


class StartsThenNodeFails(NodeFailsOnce):
    """The first job starts (reads its secrets file, as a job does) and then its node fails."""

    def submit(self, script_path: str) -> str:
        if not self.submitted:
            (Path(script_path).parent / "secrets.json").unlink()
        return super().submit(script_path)


def test_a_resubmitted_job_gets_its_secret_again_and_none_is_left(tmp_path: Path) -> None:
    value = "resubmitted-secret-value"
    cluster = SlurmCluster(work_dir=str(tmp_path), poll_interval_seconds=0.1)
    staged = stage(
        NotebookRequest(
            notebook=str(DATA / "secret.ipynb"), parameters={"password": {"$secret": "b"}}
        ),
        tmp_path / "job",
        check_kernel=False,
        resolve=lambda parameter, block: value,
    )
    commands = StartsThenNodeFails()
    outcome = asyncio.run(SlurmExecutor(cluster, commands).execute(staged))
    assert len(commands.submitted) == 2 and outcome.slurm.attempts == 2
    assert outcome.report.outputs["length"] == len(value)  # the value, not the mask
    assert outcome.report.outputs["password"] == "********"
    assert not (tmp_path / "job" / "secrets.json").exists()
    job_files = [p.read_bytes() for p in (tmp_path / "job").rglob("*") if p.is_file()]
    assert job_files and not [data for data in job_files if value.encode() in data]


def test_a_jobs_mem_limits_its_kernel_and_the_cell_that_reaches_it_is_named(
    slurm_partition: str, prefect_server: str, tmp_path: Path
) -> None:
    """``--mem`` of the cluster block, less the job's own process, is the kernel's limit:
    the cell that reaches it is stopped on the node, named, and its memory recorded."""
    name = f"test-mem-{uuid.uuid4().hex[:8]}"
    SlurmCluster(
        work_dir=str(tmp_path / "shared"),
        partition=slurm_partition,
        memory="600M",
        poll_interval_seconds=0.3,
        max_poll_interval_seconds=2,
    ).save(name)
    state = run_flow(
        notebook=str(DATA / "grows.ipynb"),
        parameters={"pause": 0.5},
        cluster=name,
        store=str(tmp_path / "store"),
    )
    assert state.is_failed()
    error = state_outcome(state)
    assert isinstance(error, MemoryLimitError), error
    limit = 600 - JOB_HEADROOM_MIB
    assert str(error).endswith(f" of its {limit} MiB limit")
    result = NotebookResult.model_validate(error.result)
    assert result.slurm is not None and result.slurm.state == "FAILED"  # the job ended itself
    assert result.error is not None and result.error.cell_index in (4, 5)  # ~50 + 100 a cell
    ran = [c for c in result.cells if c.status in ("ok", "error")]
    assert all(c.peak_memory_bytes for c in ran)
    assert result.resources.peak_memory_bytes >= limit * 1024 * 1024  # type: ignore[operator]


def test_a_failed_job_is_repaired_cold_on_the_cluster(slurm_cluster: str, tmp_path: Path) -> None:
    """No kernel outlives its job: a repair of a Slurm run runs the cells before the failed
    one again, in a job of its own, marked re-executed, with the fixed notebook."""
    store = str(tmp_path / "store")
    failed = run_flow(notebook=str(DATA / "raises.ipynb"), cluster=slurm_cluster, store=store)
    assert failed.is_failed()
    failed_id = str(failed.state_details.flow_run_id)
    fixed = nbformat.read(DATA / "raises.ipynb", as_version=4)
    fixed.cells[3].source = 'print(f"value {value}")'  # cell 3 no longer raises
    nbformat.write(fixed, tmp_path / "raises.ipynb")
    state = run_flow(repair_of=failed_id, notebook=str(tmp_path / "raises.ipynb"))
    assert state.is_completed(), state.message
    result: NotebookResult = state_outcome(state)
    assert result.repaired_from is not None
    assert (result.repaired_from.mode, result.repaired_from.from_cell) == ("cold", 3)
    assert result.slurm is not None and result.slurm.state == "COMPLETED"  # a job again
    assert [c.re_executed for c in result.cells] == [True] * 3 + [False] * 2
    executed = nbformat.read(result.artefacts.notebook, as_version=4)  # type: ignore[arg-type]
    (cell,) = [c for c in executed.cells if c.metadata.get("nbjobs", {}).get("index") == 3]
    assert cell.outputs[0]["text"] == "value 42\n"  # cell 2's value, run again on the node
