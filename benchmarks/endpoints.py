"""Notebook endpoints: throughput and latency of the served API against a bare Kernel Gateway,
and the latency of the same endpoint called as a job.

Starts a Prefect server of its own (SQLite, 127.0.0.1) and ``nbjobs serve``, then:

- **served**: ``nbjobs endpoints serve examples/endpoints.ipynb`` (a ``serve-endpoints``
  run, with basic auth from a Secret block) against ``python -m kernel_gateway`` on the
  same notebook with no auth, as its users run it. 4 concurrent clients POST to
  ``/echo`` for ``--seconds`` each round, the two alternating over ``--rounds``;
  requests per second, median and p99 latency, and the ratio ours / bare.
- **job**: ``endpoint/post-echo`` over Prefect's REST API, one call at a time, from
  the POST of ``create_flow_run`` to ``response.json`` read back.

    .venv/bin/python benchmarks/endpoints.py [--rounds 4] [--seconds 10] [--jobs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import BIN, prefect_server, spread  # noqa: E402
from notebook_jobs.deployments.api import PrefectHTTP  # noqa: E402
from notebook_jobs.tasks.models import summary_links  # noqa: E402
from tests.processes import free_port, stop  # noqa: E402

NOTEBOOK = ROOT / "examples" / "endpoints.ipynb"
CLIENTS = 4
PASSWORD = "bench-password"
BODY = {"event": "ping", "values": [1, 2, 3]}


def load(url: str, seconds: float, auth: tuple[str, str] | None) -> list[float]:
    """``CLIENTS`` threads POSTing to ``url`` for ``seconds``; every request's latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(auth=auth, timeout=30) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                answer = http.post(url, json=BODY)
                took = time.perf_counter() - started
                assert answer.status_code == 200, answer.text
                with lock:
                    latencies.append(took)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, prefect_server(Path(folder)) as api_url:
        home = Path(folder)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=api_url,
            PREFECT_HOME=str(home / "client"),
            NBJOBS_HOME=str(home / "nbjobs"),
            NBJOBS_STORE=str(home / "store"),
        )
        worker = subprocess.Popen(
            [str(BIN / "nbjobs"), "serve"],
            env=env,
            stdout=open(home / "serve.log", "wb"),  # noqa: SIM115 - the process owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        bare = None
        try:
            nbjobs = [str(BIN / "nbjobs")]
            code = "import sys\nfrom prefect.blocks.system import Secret\nSecret(value=sys.argv[1]).save('bench-password', overwrite=True)"
            subprocess.run([str(BIN / "python"), "-c", code, PASSWORD], env=env, check=True)
            ours_port = free_port()
            while (bare_port := free_port()) == ours_port:
                pass
            subprocess.run(
                [*nbjobs, "endpoints", "serve", str(NOTEBOOK), "--name", "bench",
                 "--port", str(ours_port), "--auth-secret", "bench-password"],
                env=env, check=True,
            )  # fmt: skip
            bare = subprocess.Popen(
                [sys.executable, "-m", "kernel_gateway",
                 "--KernelGatewayApp.api=kernel_gateway.notebook_http",
                 f"--KernelGatewayApp.seed_uri={NOTEBOOK}", "--KernelGatewayApp.ip=127.0.0.1",
                 f"--KernelGatewayApp.port={bare_port}"],
                env={**env, "JUPYTER_RUNTIME_DIR": str(home / "bare-runtime")},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{bare_port}/", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            targets = {
                "nbjobs": (f"http://127.0.0.1:{ours_port}/echo", ("nbjobs", PASSWORD)),
                "bare": (f"http://127.0.0.1:{bare_port}/echo", None),
            }
            for url, auth in targets.values():  # warm: first kernel, first request
                load(url, 1.0, auth)
            seen: dict[str, list[float]] = {"nbjobs": [], "bare": []}
            rates: dict[str, list[float]] = {"nbjobs": [], "bare": []}
            for round_ in range(args.rounds):  # each goes first every other round
                order = list(targets.items())
                for name, (url, auth) in order if round_ % 2 == 0 else reversed(order):
                    latencies = load(url, args.seconds, auth)
                    seen[name] += latencies
                    rates[name].append(len(latencies) / args.seconds)
            print(
                f"served API, {CLIENTS} concurrent clients, POST /echo, {args.rounds} x {args.seconds:.0f} s each, alternating:"
            )
            for name in seen:
                print(
                    f"  {name:7s} {statistics.mean(rates[name]):7.1f} req/s  "
                    f"median {1000 * statistics.median(seen[name]):6.1f} ms  "
                    f"p99 {1000 * p99(seen[name]):6.1f} ms  (n={len(seen[name])})"
                )
            ratio = statistics.mean(rates["nbjobs"]) / statistics.mean(rates["bare"])
            print(f"  ratio nbjobs / bare: {ratio:.3f}")

            subprocess.run([*nbjobs, "endpoints", "stop", "bench"], env=env, check=True)
            subprocess.run(
                [*nbjobs, "endpoints", "deploy", str(NOTEBOOK)], env=env, check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            api = PrefectHTTP(api_url)
            deployment = api.deployment_id("endpoint", "post-echo")
            took: list[float] = []
            for index in range(args.jobs + 1):
                started = time.perf_counter()
                run = api.request(
                    "POST",
                    f"/deployments/{deployment}/create_flow_run",
                    json={"parameters": {"request": {"body": BODY}}},
                ).json()
                api.wait(run["id"])
                summary = api.artifacts(run["id"])["post-echo-response"]["data"]
                link = summary_links(summary)["response"]
                response = httpx.get(link) if link.startswith("http") else None
                if response is None:
                    Path(link.removeprefix("file://")).read_bytes()
                if index:  # the first call starts the worker's kernel pool: left out
                    took.append(time.perf_counter() - started)
            print("job mode, POST create_flow_run to response.json read back, one at a time:")
            print(f"  {spread(took)}")
        finally:
            if bare is not None:
                bare.terminate()
                bare.wait(timeout=30)
            stop(worker)


if __name__ == "__main__":
    main()
