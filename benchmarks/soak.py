"""Soak: one long-lived worker on PostgreSQL, hundreds of runs, faults on a schedule.

    python benchmarks/soak.py                 # 30 minutes, as in docs/performance.md
    python benchmarks/soak.py --minutes 5

Starts PostgreSQL (tests/services/postgres.sh), ``prefect server start`` on it,
``nbjobs serve --limit 4`` (the worker under test), and an S3 endpoint (moto) behind a
gate this script can close. Then it triggers runs over HTTP as fast as the worker
takes them (at most ``--in-flight`` waiting or running), with a mix of:

- ``ok``: ``params.ipynb`` with its own ``x``; ends Completed, its ``echo`` output is its x;
- ``raises``: a notebook's own exception, every 25th run; ends Failed;
- ``batch``: a ``run-notebooks`` batch of 4 (a deployment run by the worker in a
  subprocess, as Prefect's process worker does), every 100th run;

and, on a schedule spread over the soak, these faults:

- ``kill``: a kernel SIGKILLed mid-cell (its run is retried once and completes);
- ``store-down``: the artefact store unreachable for 20 s (runs that end then are
  spilled, and ``nbjobs retry-uploads`` stores them afterwards);
- ``server-restart``: the Prefect server stopped and started again, once;
- ``cancel``: ten runs cancelled while a cell runs (they end Cancelled, their partial
  notebook stored).

Reported: how each kind of run ended against what it should have; runs lost (no
result anywhere), stuck (not final at the end) or run twice; and the worker's RSS,
open file descriptors, threads and child processes over time. ``tests/deployments/
test_soak.py`` runs a short version of the same (``Soak(runs=...)``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from notebook_jobs.blocks.exceptions import APIError  # noqa: E402
from notebook_jobs.deployments.api import PrefectHTTP  # noqa: E402
from notebook_jobs.deployments.processes import wait_for  # noqa: E402
from tests.processes import free_port, start_prefect_server, stop  # noqa: E402

BIN = Path(sys.executable).parent
DATA = ROOT / "tests" / "data"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
SAMPLE_SECONDS = 10.0
STORE_DOWN_SECONDS = 20.0
BATCH_SIZE = 4
BASELINE_RUNS = 10  # the worker's resting state is first sampled after these
# At rest: the worker's children and open files unchanged over this many samples, a
# second apart; given up on (the last sample stands) after SETTLE_SECONDS.
STEADY_SAMPLES = 3
SETTLE_SECONDS = 60.0


class StoreGate:
    """A TCP gate in front of the S3 endpoint: open, or refusing every connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._open = threading.Event()
        self._open.set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="store-gate").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                client.close()  # a reset: as an endpoint that is down
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.close()
                with self._lock:
                    self._conns.discard(sock)

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        self._open.clear()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.close()

    def up(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._server.close()


class PrefectServer:
    """``prefect server start`` on PostgreSQL, on a fixed port so it can be restarted."""

    def __init__(self, home: Path, database_url: str) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "prefect-server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(
            PREFECT_HOME=str(home / "prefect-server"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_prefect_server(self.port, self.env, self.log)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@dataclass
class Planned:
    """One run the soak started, and how it should end."""

    run_id: str
    kind: str
    expect: set[str]
    created: float
    x: int | None = None
    final: str | None = None
    message: str = ""


@dataclass
class Soak:
    """The soak itself; ``run()`` returns its report (also printed by ``main``)."""

    home: Path
    minutes: float | None = 30.0
    runs: int | None = None  # stop after this many runs instead of after ``minutes``
    in_flight: int = 6
    limit: int = 4
    cancellations: int = 10
    sample_seconds: float = SAMPLE_SECONDS
    store_down_seconds: float = STORE_DOWN_SECONDS  # the test's is shorter: it only waits
    planned: list[Planned] = field(default_factory=list)
    baseline: dict[str, float] | None = None  # the worker at rest after BASELINE_RUNS runs
    started: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def run(self) -> dict[str, Any]:
        from moto.server import ThreadedMotoServer

        from benchmarks.common import postgres_url

        self.home.mkdir(parents=True, exist_ok=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto: a line per request
        database = f"nbjobs_soak_{uuid.uuid4().hex[:8]}"
        self.server = PrefectServer(self.home, postgres_url(database))
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        moto.start()
        moto_port = moto.get_host_and_port()[1]
        self.gate = StoreGate(moto_port)
        self.bucket = f"soak-{uuid.uuid4().hex[:8]}"
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}")
        self.s3.create_bucket(Bucket=self.bucket)
        self.server.start()
        self.worker_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NBJOBS_"))},
            "PREFECT_HOME": str(self.home / "client"),
            "PREFECT_API_URL": self.server.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "NBJOBS_HOME": str(self.home / "nbjobs"),
            "NBJOBS_STORE": f"s3://{self.bucket}/runs",
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{self.gate.port}",
        }
        self.api = PrefectHTTP(self.server.api_url)
        worker_log = (self.home / "serve.log").open("wb")
        self.worker = subprocess.Popen(
            [str(BIN / "nbjobs"), "serve", "--limit", str(self.limit)],
            env=self.worker_env,
            cwd=ROOT,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(
                self._registered,
                lambda: self.worker.poll() is not None,
                "nbjobs serve",
                self.home / "serve.log",
            )
            self._make_batch_deployment()
            self._drive()
            self._settle()
            report = self._report()
        finally:
            self.api.close()
            stop(self.worker)
            worker_log.close()
            self.server.stop()
            self.gate.close()
            moto.stop()
        time.sleep(2)
        report["kernels_left"] = sorted(leftover_kernels(self.home))
        return report

    # -- set-up ------------------------------------------------------------------

    def _registered(self) -> bool:
        try:
            self.adhoc = self.api.deployment_id("run-notebook", "adhoc")
        except APIError:
            return False
        return True

    def _make_batch_deployment(self) -> None:
        """``run-notebooks`` as a deployment of the worker's pool (a subprocess per run)."""
        flow = self.api.request("POST", "/flows/", json={"name": "run-notebooks"}).json()
        deployment = self.api.request(
            "POST",
            "/deployments/",
            json={
                "name": "soak-batch",
                "flow_id": flow["id"],
                "work_pool_name": "notebook-jobs",
                "entrypoint": "flows/run_notebooks.py:run_notebooks",
                "path": str(ROOT),
                "enforce_parameter_schema": False,
            },
        ).json()
        self.batch = str(deployment["id"])

    # -- driving -----------------------------------------------------------------

    def _drive(self) -> None:
        started = self.started = time.monotonic()
        end = started + (self.minutes or 0) * 60 if self.runs is None else float("inf")
        total = self.runs or 10**9
        # the faults' moments, as fractions of the soak
        faults = {
            "kill": 0.15,
            "store-down": 0.35,
            "server-restart": 0.6,
            **{
                f"cancel-{i}": 0.1 + 0.8 * i / max(self.cancellations, 1)
                for i in range(self.cancellations)
            },
        }
        count = 0
        next_sample = 0.0
        while count < total and time.monotonic() < end:
            progress = (
                count / total
                if self.runs is not None
                else (time.monotonic() - started) / (end - started)
            )
            for name, at in list(faults.items()):
                if progress >= at:
                    del faults[name]
                    self._fault(name)
            if time.monotonic() >= next_sample:
                self._sample(started)
                next_sample = time.monotonic() + self.sample_seconds
            if self._waiting() >= self.in_flight:
                time.sleep(0.2)
                continue
            if self.baseline is None and count >= BASELINE_RUNS:
                self.baseline = self._idle_sample()
            count += 1
            if count % 100 == 0:
                self._trigger_batch(count)
            elif count % 25 == 0:
                self._trigger("raises", {"notebook": str(DATA / "raises.ipynb")}, {"FAILED"})
            else:
                self._trigger(
                    "ok",
                    {"notebook": str(DATA / "params.ipynb"), "parameters": {"x": count}},
                    {"COMPLETED"},
                    x=count,
                )
        for name in list(faults):  # a short soak still gets every fault
            self._fault(name)
        self._sample(started)

    def _trigger(
        self, kind: str, parameters: dict[str, Any], expect: set[str], x: int | None = None
    ) -> Planned:
        key = uuid.uuid4().hex  # a retried POST (server restarting) makes no second run
        while True:
            try:
                run_id = self.api.trigger(
                    "run-notebook",
                    "adhoc",
                    parameters,
                    idempotency_key=key,
                    deployment_id=self.adhoc,
                )
                break
            except APIError as error:
                self.events.append(f"trigger retried: {error}"[:200])
                time.sleep(1.0)
        planned = Planned(run_id, kind, expect, time.monotonic(), x)
        self.planned.append(planned)
        return planned

    def _trigger_batch(self, count: int) -> None:
        parameters = {
            "notebook": str(DATA / "params.ipynb"),
            "grid": {"x": list(range(count, count + BATCH_SIZE))},
            "store": f"s3://{self.bucket}/runs",
        }
        run_id = self.api.request(
            "POST",
            f"/deployments/{self.batch}/create_flow_run",
            json={"parameters": parameters, "idempotency_key": uuid.uuid4().hex},
        ).json()["id"]
        self.planned.append(Planned(str(run_id), "batch", {"COMPLETED"}, time.monotonic()))

    def _waiting(self) -> int:
        open_ids = [p.run_id for p in self.planned if p.final is None]
        if not open_ids:
            return 0
        try:
            runs = self.api.request(
                "POST",
                "/flow_runs/filter",
                json={"flow_runs": {"id": {"any_": open_ids}}, "limit": 200},
            ).json()
        except APIError:
            return self.in_flight  # the server is restarting: wait
        states = {r["id"]: (r["state"] or {}) for r in runs}
        for planned in self.planned:
            state = states.get(planned.run_id)
            if planned.final is None and state and state.get("type") in FINAL:
                planned.final = state["type"]
                planned.message = state.get("message") or ""
        return sum(1 for p in self.planned if p.final is None)

    # -- faults ------------------------------------------------------------------

    def _fault(self, name: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {name}")
        if name == "kill":
            self._kill_a_kernel()
        elif name == "store-down":
            self.gate.down()
            time.sleep(self.store_down_seconds)
            self.gate.up()
        elif name == "server-restart":
            self.server.stop()
            self.server.start()
        elif name.startswith("cancel"):
            self._cancel_a_run()

    def _started_sleeper(self, kind: str, expect: set[str]) -> Planned:
        planned = self._trigger(
            kind,
            {"notebook": str(DATA / "sleeps.ipynb"), "parameters": {"seconds": 8}},
            expect,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if kernel_of(self.worker.pid, planned.run_id) is not None:
                time.sleep(1.5)  # its first cells take milliseconds: now it sleeps
                return planned
            time.sleep(0.2)
        self.events.append(f"{kind}: run {planned.run_id} never reached its sleep")
        return planned

    def _kill_a_kernel(self) -> None:
        planned = self._started_sleeper("kill", {"COMPLETED"})  # retried once, then completes
        kernel = kernel_of(self.worker.pid, planned.run_id)
        if kernel is not None:
            with contextlib.suppress(psutil.Error):
                kernel.send_signal(signal.SIGKILL)

    def _cancel_a_run(self) -> None:
        planned = self._started_sleeper("cancel", {"CANCELLED"})
        self.api.set_state(planned.run_id, "CANCELLING", "soak: cancelled mid-cell")

    def _sample(self, started: float) -> dict[str, float] | None:
        """Measure the worker now and keep the sample (``None`` if it is gone)."""
        sample = self._measure(started)
        if sample is not None:
            self.samples.append(sample)
        return sample

    def _measure(self, started: float) -> dict[str, float] | None:
        try:
            process = psutil.Process(self.worker.pid)
            sample = {
                "t": round(time.monotonic() - started, 1),
                "runs": len(self.planned),
                "rss_mb": round(process.memory_info().rss / 2**20, 1),
                "fds": process.num_fds(),
                "threads": process.num_threads(),
                "children": len(process.children(recursive=True)),
            }
        except psutil.Error:
            return None
        return sample

    def _idle_sample(self, timeout: float = 600) -> dict[str, float]:
        """A sample of the worker at rest, kept; its children and open files held still.

        The baseline and the end are both taken so: once no run is waiting, after two
        sampling intervals, and once ``STEADY_SAMPLES`` measurements a second apart
        agree. A run is final in the API a moment before its worker has shut its
        kernel down and refilled its pool; each kernel has its own process, sockets and
        threads, so a sample taken in that moment counts one more or one fewer (a
        baseline taken one kernel short made the end look like a leak of 23 fds). A
        leak stays through the wait.
        """
        deadline = time.monotonic() + timeout
        while self._waiting() and time.monotonic() < deadline:
            time.sleep(1.0)
        time.sleep(2 * self.sample_seconds)
        recent: list[dict[str, float]] = []
        settle = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < settle:
            measured = self._measure(self.started)
            if measured is not None:
                recent = [*recent, measured][-STEADY_SAMPLES:]
                held = {(m["children"], m["fds"]) for m in recent}
                if len(recent) == STEADY_SAMPLES and len(held) == 1:
                    break
            time.sleep(1.0)
        if recent:
            self.samples.append(recent[-1])
        return self.samples[-1] if self.samples else {}

    # -- the end -------------------------------------------------------------------

    def _settle(self, timeout: float = 600) -> None:
        """Wait for every run to end; then store what was spilled."""
        deadline = time.monotonic() + timeout
        while self._waiting() and time.monotonic() < deadline:
            time.sleep(1.0)
        retry = subprocess.run(
            [str(BIN / "nbjobs"), "retry-uploads"],
            env=self.worker_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.events.append(f"retry-uploads: exit {retry.returncode} {retry.stdout.strip()[-300:]}")
        self._idle_sample()  # the worker's idle state, after everything ended

    def _stored(self, run_id: str) -> tuple[dict[str, Any] | None, int]:
        """The run's result.json in the store, and how many attempts stored one."""
        prefix = f"runs/run-notebook/{run_id}/"
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])
        results = [o["Key"] for o in listed if o["Key"].endswith("result.json")]
        if not results:
            return None, 0
        body = self.s3.get_object(Bucket=self.bucket, Key=sorted(results)[-1])["Body"].read()
        return json.loads(body), len(results)

    def _report(self) -> dict[str, Any]:
        outcomes: Counter[tuple[str, str]] = Counter()
        unexpected, lost, twice, wrong = [], [], [], []
        for planned in self.planned:
            final = planned.final or "STUCK"
            spilled = final == "FAILED" and "spill folder" in planned.message
            outcomes[(planned.kind, final + (" (store down: spilled)" if spilled else ""))] += 1
            if final not in planned.expect and not spilled:
                unexpected.append((planned.kind, planned.run_id, final, planned.message[:200]))
            if planned.kind == "batch":
                continue  # its items are runs of their own, checked through the batch's state
            document, attempts = self._stored(planned.run_id)
            if document is None:
                lost.append((planned.kind, planned.run_id, final))
                continue
            if planned.kind != "kill" and attempts > 1:
                twice.append(planned.run_id)
            echoed = (document.get("outputs") or {}).get("echo") or {}
            if planned.x is not None and final == "COMPLETED" and echoed.get("x") != planned.x:
                wrong.append(planned.run_id)
            if final in ("FAILED", "CANCELLED") and not document["artefacts"].get("notebook"):
                lost.append((planned.kind, planned.run_id, f"{final} without its notebook"))
        return {
            "runs": len(self.planned),
            "outcomes": {f"{kind} {final}": n for (kind, final), n in sorted(outcomes.items())},
            "unexpected": unexpected,
            "stuck": [p.run_id for p in self.planned if p.final is None],
            "lost": lost,
            "run_twice": twice,
            "wrong_output": wrong,
            "samples": self.samples,
            "start": self.baseline or (self.samples[0] if self.samples else {}),
            "end": self.samples[-1] if self.samples else {},
            "events": self.events,
            # uploads that failed while the store was down (retried, or spilled)
            "upload_failures": (self.home / "serve.log").read_text().count("could not upload"),
            "scheduled_again": (self.home / "serve.log").read_text().count("scheduled again"),
        }


def worker_kernels(worker_pid: int) -> Iterator[psutil.Process]:
    """The worker's kernel processes (spawned, or forked by its fork server)."""
    try:
        descendants = psutil.Process(worker_pid).children(recursive=True)
    except psutil.Error:
        return
    for process in descendants:
        try:
            command = " ".join(process.cmdline())
            parent = process.parent()
            forked = parent is not None and "forkserver.py" in " ".join(parent.cmdline())
            if ("ipykernel" in command or forked) and process.status() != psutil.STATUS_ZOMBIE:
                yield process
        except psutil.Error:
            continue


def kernel_of(worker_pid: int, run_id: str) -> psutil.Process | None:
    """The kernel running ``run_id``: its working folder is the run's own."""
    for process in worker_kernels(worker_pid):
        with contextlib.suppress(psutil.Error):
            if f"/runs/{run_id}/" in process.cwd() + "/":
                return process
    return None


def leftover_kernels(home: Path) -> set[int]:
    """Kernel processes of the soak still running after the worker stopped (none, we hope).

    Spawned kernels are ``ipykernel`` processes; forked ones are not, so a kernel is
    also any process whose working folder is in the soak's folder.
    """
    found = set()
    for process in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            if str(home) in (process.info["cwd"] or "") and process.pid != os.getpid():
                found.add(process.pid)
    return found


def print_report(report: dict[str, Any]) -> None:
    print(f"runs: {report['runs']}")
    for outcome, n in report["outcomes"].items():
        print(f"  {outcome:<28} {n}")
    for name in ("unexpected", "stuck", "lost", "run_twice", "wrong_output", "kernels_left"):
        print(f"{name}: {len(report[name])} {report[name][:5] if report[name] else ''}")
    start, end = report["start"], report["end"]
    print(f"uploads that failed while the store was down: {report['upload_failures']}")
    print(f"runs the worker could not start and scheduled again: {report['scheduled_again']}")
    print("worker          after 10 runs    end      max")
    for key in ("rss_mb", "fds", "threads", "children"):
        peak = max(s[key] for s in report["samples"])
        print(f"  {key:<12} {start.get(key, 0):>10} {end.get(key, 0):>8} {peak:>8}")
    print("events:", *report["events"], sep="\n  ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--runs", type=int, help="stop after this many runs instead")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    home = Path(os.environ.get("SOAK_HOME") or f"/tmp/nbjobs-soak-{os.getpid()}")
    report = Soak(home, minutes=args.minutes, runs=args.runs).run()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    rss = [s["rss_mb"] for s in report["samples"]]
    print(f"rss median {statistics.median(rss):.1f} MB" if rss else "no samples")


if __name__ == "__main__":
    main()
