"""The local server on a machine shared with other people, and hammered by many commands.

A second local account (made here: CI runs as root) pokes at everything the owner's
local server started, with the standard library only, the way `curl` and a shell
would: the API, the worker's socket, the files under ``$NBJOBS_HOME``, the kernels'
sockets. The owner's home sits in a folder everyone may traverse, so that only what
nbjobs itself sets keeps the other account out. Then 16 ``nbjobs run`` at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from notebook_jobs.blocks.exceptions import APIError
from tests.conftest import DATA, EXAMPLES
from tests.deployments.conftest import NBJOBS, RUN_TIMEOUT_SECONDS, Local, clean_env

INTRUDER = "nbjobs-intruder"
SYSTEM_PYTHON = "/usr/bin/python3"
T = TypeVar("T")

# What the other account runs: each probe says what it got, never raises.
PROBES = textwrap.dedent(
    """
    import json, os, socket, sys, urllib.error, urllib.request
    task = json.loads(sys.argv[1])
    seen = {"uid": os.getuid()}

    def call(method, url, body=None):
        request = urllib.request.Request(
            url, data=None if body is None else json.dumps(body).encode(), method=method,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    api = task["api_url"]
    seen["api"] = {path: call("POST", api + path, {}) for path in (
        "/deployments/filter", "/flow_runs/filter", "/artifacts/filter")}
    seen["create"] = call("POST", f"{api}/deployments/{task['adhoc_id']}/create_flow_run",
                          {"parameters": {"notebook": task["notebook"]}})
    seen["files"] = {}
    for path in task["paths"]:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                open(path, "rb").close()
            seen["files"][path] = "opened"
        except OSError as error:
            seen["files"][path] = type(error).__name__
    seen["sockets"] = {}
    for path in task["sockets"]:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect(path)
            seen["sockets"][path] = "connected"
        except OSError as error:
            seen["sockets"][path] = type(error).__name__
        finally:
            client.close()
    print(json.dumps(seen))
    """
)


def as_intruder(task: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        ["runuser", "-u", INTRUDER, "--", SYSTEM_PYTHON, "-c", PROBES, json.dumps(task)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    """The owner's local server, its home in a folder every account may traverse."""
    if os.geteuid() != 0:
        pytest.skip("making a second local account needs root (CI runs as root)")
    if not Path(SYSTEM_PYTHON).exists() or not shutil.which("runuser"):
        pytest.skip(f"the second account runs {SYSTEM_PYTHON} through runuser: not here")
    if subprocess.run(["id", INTRUDER], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER],
            check=True,
        )
    # not under pytest's own 0700 folder: only nbjobs' permissions may keep them out
    open_folder = Path(f"/tmp/nbjobs-shared-{uuid.uuid4().hex[:8]}")
    open_folder.mkdir(mode=0o755)
    open_folder.chmod(0o1777)  # as /tmp is
    home = open_folder / "owner"
    local = Local(home, clean_env(home))
    done = local.nbjobs("run", str(EXAMPLES / "report.ipynb"))
    assert done.returncode == 0, done.stderr
    yield local
    local.nbjobs("server", "stop", timeout=120)
    shutil.rmtree(open_folder, ignore_errors=True)


def asked(processes: list[psutil.Process], what: Callable[[psutil.Process], list[T]]) -> list[T]:
    """``what`` of each process that is still there when asked: a kernel's helper may
    end (or wait as a zombie) between listing the worker's children and reading them."""
    found: list[T] = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            found.extend(what(process))
    return found


def kernel_sockets(worker_pid: int) -> list[str]:
    """The Unix sockets the worker's kernels (and fork server) listen on."""
    connections = asked(
        psutil.Process(worker_pid).children(recursive=True),
        lambda process: process.net_connections(kind="unix"),
    )
    return sorted({connection.laddr for connection in connections if connection.laddr})


def test_a_second_account_gets_nothing_and_leaves_no_trace(shared: Local) -> None:
    # a run in progress: its kernel is alive while the other account tries it
    sleeping = subprocess.Popen(
        [NBJOBS, "run", str(DATA / "sleeps.ipynb"), "-p", "seconds", "20"],
        env=shared.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    api = shared.api()
    status = shared.status()
    marker = shared.home.parent / "written-by-the-intruder"
    notebook = json.loads((DATA / "trivial.ipynb").read_text())
    notebook["cells"][0]["source"] = f"open({str(marker)!r}, 'w').write('as the owner')"
    time.sleep(3)  # the run's kernel has started
    sockets = kernel_sockets(status["worker_pid"])
    assert sockets, "the worker's kernels listen on no Unix socket"
    # TCP: the file server (signed links) and ipykernel's pipe for forked subprocesses'
    # output (it drops messages without its 16 random bytes), on loopback only
    worker = psutil.Process(status["worker_pid"])
    listening = [
        connection.laddr
        for connection in asked(
            [worker, *worker.children(recursive=True)],
            lambda process: process.net_connections(kind="inet"),
        )
        if connection.status == psutil.CONN_LISTEN
    ]
    assert listening and {address.ip for address in listening} == {"127.0.0.1"}, listening
    # the kernels' connection files: the owner's alone, with a key (never an empty HMAC)
    connection_files = [
        argument
        for argument in asked(worker.children(recursive=True), psutil.Process.cmdline)
        if argument.endswith(".json")
    ]
    assert connection_files
    for connection_file in connection_files:
        assert Path(connection_file).stat().st_mode & 0o077 == 0, connection_file
        info = json.loads(Path(connection_file).read_text())
        assert info["key"] and info["transport"] == "ipc", info["transport"]
    paths = [str(p) for p in [shared.home, *shared.home.rglob("*")]] + connection_files
    seen = as_intruder(
        {
            "api_url": status["api_url"],
            "adhoc_id": api.deployment_id("run-notebook", "adhoc"),
            "notebook": json.dumps(notebook),
            "paths": paths,
            "sockets": [
                str(shared.home / "server" / "worker.sock"),
                str(shared.home / "server" / "postgres" / "socket" / ".s.PGSQL.5432"),
                *sockets,
            ],
        }
    )
    assert seen["uid"] != 0
    assert seen["api"] == {
        "/deployments/filter": 401,
        "/flow_runs/filter": 401,
        "/artifacts/filter": 401,
    }
    assert seen["create"] == 401
    assert set(seen["files"].values()) == {"PermissionError"}, seen["files"]
    assert set(seen["sockets"].values()) == {"PermissionError"}, seen["sockets"]
    # the owner's commands still work, and nothing was made by the attempt
    _, stderr = sleeping.communicate(timeout=RUN_TIMEOUT_SECONDS)
    assert sleeping.returncode == 0, stderr
    runs = api.request("POST", "/flow_runs/filter", json={}).json()
    assert runs and not [r for r in runs if "written-by-the-intruder" in json.dumps(r)]
    assert not marker.exists()
    # the API without credentials, from the owner too: 401
    with pytest.raises(APIError) as refused:
        type(api)(status["api_url"], deadline=0).request("POST", "/flow_runs/filter", json={})
    assert refused.value.status_code == 401


def test_what_the_server_keeps_is_private_to_its_owner(shared: Local) -> None:
    server = shared.home / "server"
    assert oct(shared.home.stat().st_mode & 0o777) == "0o700"
    for path in [server, *server.rglob("*")]:
        mode = path.lstat().st_mode & 0o777
        if path.is_socket():
            continue  # in a 0700 folder; PostgreSQL's socket folder is 0700 too
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    credentials = (server / "credentials").read_text().strip()
    assert credentials.startswith("nbjobs:") and len(credentials) > 30
    assert credentials not in (server / "server.log").read_text()
    assert credentials not in (server / "worker.log").read_text()


def test_sixteen_runs_at_once_all_succeed_and_each_exists_once(shared: Local) -> None:
    batch = uuid.uuid4().hex[:8]

    def one(n: int) -> subprocess.CompletedProcess[str]:
        return shared.nbjobs(
            "run", str(EXAMPLES / "report.ipynb"), "-p", "n", str(n), "-p", "label", batch
        )

    with ThreadPoolExecutor(16) as pool:
        done = list(pool.map(one, range(1, 17)))
    failed = [(d.returncode, d.stderr[-500:]) for d in done if d.returncode != 0]
    assert not failed, failed
    for n, finished in enumerate(done, start=1):
        assert f"output total = {sum(i * i for i in range(1, n + 1))}" in finished.stdout
    runs = (
        shared.api()
        .request(
            "POST", "/flow_runs/filter", json={"flow_runs": {"tags": {"all_": ["trigger:cli"]}}}
        )
        .json()
    )
    ours = [r for r in runs if r["parameters"].get("parameters", {}).get("label") == batch]
    ns = sorted(r["parameters"]["parameters"]["n"] for r in ours)
    assert ns == list(range(1, 17)), ns  # each run once: none lost, none made twice
    # `nbjobs run` returns once the result is stored; Prefect's final state follows
    api = shared.api()
    assert {api.wait(r["id"], timeout=60)["state"]["type"] for r in ours} == {"COMPLETED"}


def test_a_killed_postgresql_is_started_again_with_the_history(shared: Local) -> None:
    before = shared.started()
    runs_before = shared.api().request("POST", "/flow_runs/count", json={}).json()
    psutil.Process(before["postgres_pid"]).kill()  # as the OOM killer would
    done = shared.nbjobs("run", str(EXAMPLES / "report.ipynb"))
    assert done.returncode == 0, done.stderr
    # the login was shown on the first start; a restart names its file instead
    assert before["login"] not in done.stderr
    assert f"asks for a login: {shared.home / 'server' / 'credentials'}" in done.stderr
    assert (
        f"the local server's PostgreSQL (pid {before['postgres_pid']}) is no longer running"
        in done.stderr
    )
    after = shared.status()
    assert after["postgres_pid"] != before["postgres_pid"]
    runs_after = shared.api().request("POST", "/flow_runs/count", json={}).json()
    assert runs_after == runs_before + 1  # nothing of the history was lost


def test_lost_credentials_and_other_choices_are_one_line_each(shared: Local) -> None:
    credentials = shared.home / "server" / "credentials"
    kept = credentials.read_text()
    credentials.unlink()
    try:
        done = shared.nbjobs("run", str(EXAMPLES / "report.ipynb"))
    finally:
        credentials.write_text(kept)
        credentials.chmod(0o600)
    assert done.returncode == 4
    assert done.stderr.strip().splitlines() == [
        f"nbjobs: cannot read the local server's credentials {credentials} (No such file or "
        "directory); `nbjobs server stop` and run again to make new ones"
    ]
    credentials.write_text("nbjobs:not-the-password\n")
    try:
        done = shared.nbjobs("run", str(EXAMPLES / "report.ipynb"))
    finally:
        credentials.write_text(kept)
    assert done.returncode == 4 and "refused the credentials" in done.stderr
    assert "Traceback" not in done.stderr
    done = shared.nbjobs("server", "start", "--database", "sqlite")
    assert done.returncode == 4
    assert "the local server is running on postgresql; `nbjobs server stop` first" in done.stderr
    done = shared.nbjobs("server", "start", "--no-auth")
    assert done.returncode == 4 and "running with credentials" in done.stderr
    assert shared.nbjobs("run", str(EXAMPLES / "report.ipynb")).returncode == 0


def test_a_data_folder_of_another_postgresql_is_one_line_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "home" / "server" / "postgres" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("11\n")
    (data / "base").mkdir()
    local = Local(tmp_path / "home", clean_env(tmp_path / "home"))
    done = local.nbjobs("server", "start")
    assert done.returncode == 4, done.stderr
    assert "was made by PostgreSQL 11 and this one is" in done.stderr
    assert "nothing was changed in it" in done.stderr and "Traceback" not in done.stderr
    assert (data / "PG_VERSION").read_text() == "11\n" and (data / "base").is_dir()
    assert not local.status()["running"]


def test_an_existing_sqlite_history_is_kept_and_moving_is_said(tmp_path: Path) -> None:
    """A home made before PostgreSQL keeps SQLite and its runs; --database postgresql
    moves to an empty history and leaves the SQLite file as it was."""
    home = tmp_path / "home"
    local = Local(home, clean_env(home))
    done = local.nbjobs("server", "start", "--database", "sqlite", "--no-auth")
    assert done.returncode == 0, done.stderr
    assert local.nbjobs("run", str(EXAMPLES / "report.ipynb")).returncode == 0
    assert local.status()["database_kind"] == "sqlite" and local.status()["login"] is None
    local.nbjobs("server", "stop")
    state = home / "server" / "state.json"
    state.unlink()  # as a home from before this choice existed
    sqlite_file = home / "server" / "prefect" / "prefect.db"
    done = local.nbjobs("run", str(EXAMPLES / "report.ipynb"))
    assert done.returncode == 0, done.stderr
    assert "keeps its SQLite database" in done.stderr and "--database postgresql" in done.stderr
    assert local.status()["database_kind"] == "sqlite"
    assert len(local.api().request("POST", "/flow_runs/filter", json={}).json()) >= 2
    local.nbjobs("server", "stop")
    kept = sqlite_file.read_bytes()
    done = local.nbjobs("server", "start", "--database", "postgresql")
    try:
        assert done.returncode == 0, done.stderr
        assert local.status()["database_kind"] == "postgresql"
        assert local.api().request("POST", "/flow_runs/filter", json={}).json() == []
        assert sqlite_file.read_bytes() == kept  # kept as it was, never deleted
    finally:
        local.nbjobs("server", "stop")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system: full before PostgreSQL's first write ends."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a full disk is a small tmpfs, and mount refused it: {mounted.stderr}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def test_a_full_disk_is_one_line_and_starts_nothing(tiny_disk: Path) -> None:
    local = Local(tiny_disk / "home", clean_env(tiny_disk / "home"))
    done = local.nbjobs("server", "start")
    assert done.returncode == 4, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("nbjobs: could not make the local server's PostgreSQL database")
    assert last.endswith("No space left on device") and "Traceback" not in done.stderr
    assert not local.status()["running"]


def test_server_env_points_prefects_own_cli_at_the_server(shared: Local) -> None:
    done = shared.nbjobs("server", "env")
    assert done.returncode == 0, done.stderr
    exported = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines())
    status = shared.status()
    assert exported == {
        "PREFECT_API_URL": status["api_url"],
        "PREFECT_API_AUTH_STRING": status["login"],
    }
    listed = subprocess.run(
        [str(Path(NBJOBS).parent / "prefect"), "flow-run", "ls", "--limit", "3"],
        env={**shared.env, **exported, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert "report" in listed.stdout  # the runs of the tests above, by name
