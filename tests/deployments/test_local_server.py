"""The embedded default as a new user meets it: `nbjobs run` with no Prefect server set.

One local server for the session (``tests/deployments/conftest.py``), started from
an empty ``$NBJOBS_HOME`` and ``PREFECT_HOME`` by the first test here, the way the
README's first command starts it, with both cores busy; the tests after it reuse it
(the papermill comparisons too). Every command is the ``nbjobs`` console script in
a subprocess.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest

from notebook_jobs.deployments.api import PrefectHTTP
from notebook_jobs.tasks.models import summary_links
from tests.browser import chromium as chromium_page
from tests.conftest import DATA, EXAMPLES, service
from tests.deployments.conftest import NBJOBS, RUN_TIMEOUT_SECONDS, Local, clean_env

# the run's page in the UI the server opens by default: V2 (at /v2) in Prefect 3.8
UI_LINE = re.compile(r"in the Prefect UI: (http://127\.0\.0\.1:\d+/v2/runs/flow-run/([0-9a-f-]+))")


def busy_loops() -> list[subprocess.Popen[bytes]]:
    """One busy process per core, as a loaded machine has."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]


def test_two_first_runs_at_once_start_one_server_with_both_cores_busy(local: Local) -> None:
    loops = busy_loops()
    try:
        runs = [
            subprocess.Popen(
                [NBJOBS, "run", str(EXAMPLES / "report.ipynb"), "-p", "n", n],
                env=local.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in ("12", "3")
        ]
        outputs = [run.communicate(timeout=RUN_TIMEOUT_SECONDS) for run in runs]
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr
        assert "report.ipynb: completed" in stdout
        assert "Traceback" not in stderr
    assert "output total = 650" in outputs[0][0] and "output total = 14" in outputs[1][0]
    # one of the two started the server, the other found it starting and used it (the
    # starter may say "starting" twice: a port taken by another home's server at the same
    # moment makes it start again on the next port)
    starters = [err for _, err in outputs if "starting the local Prefect server" in err]
    assert len(starters) == 1, [err for _, err in outputs]
    assert "the first start sets up its database" in "".join(err for _, err in outputs)
    status = local.status()
    assert status["running"] and status["server_pid"] and status["worker_pid"]
    urls = {UI_LINE.search(out).group(1).split("/v2/runs/")[0] for out, _ in outputs}  # type: ignore[union-attr]
    assert urls == {status["url"]}


def test_a_second_run_reuses_the_server_and_its_worker(local: Local) -> None:
    before = local.status()
    done = local.nbjobs("run", str(EXAMPLES / "report.ipynb"), "-p", "label", "again")
    assert done.returncode == 0, done.stderr
    assert 'output label = "again"' in done.stdout
    assert done.stderr == ""  # nothing started, nothing to say
    after = local.status()
    assert (after["server_pid"], after["worker_pid"]) == (
        before["server_pid"],
        before["worker_pid"],
    )
    # its log has no Python warning in it (Prefect's registry of worker types warned
    # twice as the worker started, that our workers replaced its process worker), nor
    # debugpy's about frozen modules, from the kernels' stderr
    worker_log = Path(after["worker_log"]).read_text()
    assert not re.findall(r"\w+Warning: .*", worker_log)
    assert "Debugger warning" not in worker_log


def test_the_ui_url_answers_and_the_run_page_shows_the_notebook(local: Local) -> None:
    chromium = service("chromium.sh", "Chromium")
    done = local.nbjobs("run", str(DATA / "params.ipynb"), "-p", "x", "7")
    assert done.returncode == 0, done.stderr
    found = UI_LINE.search(done.stdout)
    assert found, done.stdout
    url, run_id = found.groups()
    # as a browser asks for it (the UI serves its pages to HTML navigation): the V2
    # page itself, not a redirect to another UI (urllib would follow one: compared)
    request = urllib.request.Request(url, headers={"Accept": "text/html"})
    with urllib.request.urlopen(request, timeout=30) as page:
        assert page.status == 200 and b"<html" in page.read().lower()
        assert page.url == url
    # nbjobs run returns once the result is stored; Prefect's final state follows
    run = local.api().wait(run_id, timeout=120)
    assert run["state"]["type"] == "COMPLETED" and {"trigger:cli", "nbjobs"} <= set(run["tags"])
    # the UI asks for the login first (the one `nbjobs server status` prints), then
    # shows the page; it calls the API at the server's own port: a blank page says "Oops"
    with chromium_page(chromium, local.home / "chromium") as page:
        page.open(url.split("/runs/")[0])
        page.wait_for_text("Login")
        page.type_into("input", local.status()["login"])
        page.press_enter()
        page.wait_for_text("Runs")
        page.open(url)
        text = page.wait_for_text(run["name"])
        page.screenshot(local.home / "run-page.png")
        location = page.evaluate("location.href")
    assert "Something went wrong" not in text and "Not Found" not in text
    assert "params" in text
    assert location.split("?")[0] == url  # no redirect: the V2 page, as printed


def test_a_local_store_run_opens_from_the_ui_through_signed_links(local: Local) -> None:
    done = local.nbjobs("run", str(DATA / "displays.ipynb"))
    assert done.returncode == 0, done.stderr
    run_id = UI_LINE.search(done.stdout).group(2)  # type: ignore[union-attr]
    api = local.api()
    assert api.wait(run_id, timeout=120)["state"]["type"] == "COMPLETED"
    summary = api.artifacts(run_id)["displays-summary"]["data"]
    files_url = local.status()["files_url"]
    links = summary_links(summary)
    assert "served by the local server's worker on 127.0.0.1" in summary
    opened = {}
    disposition = {}
    for kind in ("html", "notebook", "result", "input"):
        assert links[kind].startswith(f"{files_url}/files/"), links[kind]
        with urllib.request.urlopen(links[kind], timeout=30) as answer:
            opened[kind] = (answer.headers["Content-Type"], answer.read())
            disposition[kind] = answer.headers["Content-Disposition"]
    assert opened["html"][0] == "text/html" and b"<html" in opened["html"][1][:300].lower()
    assert disposition["html"] is None  # a page, opened in the browser
    assert json.loads(opened["result"][1])["flow_run_id"] == run_id
    assert json.loads(opened["notebook"][1])["nbformat"] == 4
    # notebooks and JSON are downloaded, named by their run
    assert disposition["notebook"] == f"attachment; filename*=UTF-8''{run_id}-notebook.ipynb"
    assert disposition["result"] == f"attachment; filename*=UTF-8''{run_id}-result.json"
    # the plot is in the summary itself: no server needed to show it
    image = re.search(r"!\[cell 2, output 0\]\(data:image/png;base64,([^)]+)\)", summary)
    assert image is not None, summary[:2000]
    assert base64.b64decode(image.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    # a link changed by hand, or to a file nobody linked, opens nothing
    for wrong in (
        links["result"].replace("result.json", "notebook.ipynb"),
        f"{files_url}/files/{'0' * 32}/etc/passwd",
        f"{files_url}/",
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(wrong, timeout=30)
        assert refused.value.code == 404


def sleeping_run(local: Local) -> subprocess.Popen[str]:
    """``nbjobs run -v`` of a notebook whose second cell sleeps 600 s, once it sleeps."""
    run = subprocess.Popen(
        [NBJOBS, "run", str(DATA / "sleeps.ipynb"), "-p", "seconds", "600", "-v"],
        env=local.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stderr is not None
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # -v shows the run's log: wait for the first cell
        line = run.stderr.readline()
        seen.append(line)
        if line == "started\n":  # the first cell after the parameters printed it
            break
    else:
        pytest.fail("the first cell never finished:\n" + "".join(seen))
    time.sleep(0.5)  # into the 600 s sleep of cell 2
    return run


def test_ctrl_c_cancels_the_run_and_keeps_its_partial_notebook(local: Local) -> None:
    run = sleeping_run(local)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "cancelling run" in stderr and "Traceback" not in stderr
    assert "sleeps.ipynb: cancelled" in stdout
    result_path = re.search(r"result +(\S+/result\.json)", stdout).group(1)  # type: ignore[union-attr]
    result = json.loads(Path(result_path).read_text())
    assert result["status"] == "cancelled"
    assert [c["status"] for c in result["cells"]][:2] == ["ok", "ok"]
    partial = json.loads((Path(result_path).parent / "notebook.ipynb").read_text())
    assert any("started" in str(c.get("outputs")) for c in partial["cells"])
    api = local.api()
    deadline = time.monotonic() + 30
    while api.flow_run(result["flow_run_id"])["state"]["type"] != "CANCELLED":
        assert time.monotonic() < deadline, "the run did not end Cancelled"
        time.sleep(0.5)


def test_a_second_ctrl_c_leaves_with_one_line(local: Local) -> None:
    run = sleeping_run(local)
    assert run.stderr is not None
    # A cancellation takes the worker about 0.4 s here: a second Ctrl-C sent after a
    # fixed pause raced the run's end (and once came as the process exited). The
    # worker is held while the two presses arrive, as a worker slow to act would be.
    worker = local.status()["worker_pid"]
    os.kill(worker, signal.SIGSTOP)
    try:
        run.send_signal(signal.SIGINT)
        seen = []
        while not (line := run.stderr.readline()).startswith("nbjobs: cancelling run"):
            assert line, "no cancellation after the first Ctrl-C:\n" + "".join(seen)
            seen.append(line)
        run_id = line.split()[3]
        api = local.api()
        deadline = time.monotonic() + 30
        while api.flow_run(run_id)["state"]["type"] != "CANCELLING":
            assert time.monotonic() < deadline, "the first Ctrl-C did not ask to cancel"
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        os.kill(worker, signal.SIGCONT)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    found = re.search(r"stopped following run ([0-9a-f-]+); see it at (http\S+)\n", stderr)
    assert found and found.group(1) == run_id, stderr
    # the cancellation asked for by the first Ctrl-C goes on without us
    assert api.wait(found.group(1), timeout=60)["state"]["type"] == "CANCELLED"


def test_run_notebook_sync_uses_the_local_server(local: Local) -> None:
    """A Python caller with no server configured hands its run to the local worker, as
    ``nbjobs run`` does: same history, a pre-started kernel, the same errors."""
    code = f"""
import asyncio, os
from notebook_jobs.blocks.exceptions import NotebookExecutionError, NotebookNotFoundError
from notebook_jobs.deployments.python_api import run_notebook_async, run_notebook_sync
os.chdir({str(EXAMPLES)!r})  # a relative path means what it means here
result = run_notebook_sync("report.ipynb", parameters={{"n": 4, "label": "sq"}})
print(result.flow_run_id, result.outputs["total"], result.outputs["label"])
print(asyncio.run(run_notebook_async("report.ipynb")).outputs["total"])
try:
    run_notebook_sync({str(DATA / "raises.ipynb")!r})
except NotebookExecutionError as error:
    print("raised", error.cell_index, error.result["status"])
try:
    run_notebook_sync("missing.ipynb")
except NotebookNotFoundError as error:
    print("refused", error)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], env=local.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first, default, raised, refused = done.stdout.splitlines()[-4:]
    run_id, total, label = first.split()
    assert (total, label, default) == ("30", "sq", "385")
    assert raised == "raised 3 failed"
    assert refused.startswith("refused notebook not found: missing.ipynb")
    run = local.api().flow_run(run_id)
    assert run["state"]["type"] == "COMPLETED"
    assert run["deployment_id"] and "trigger:python" in run["tags"]  # the worker's run


def test_an_unwritable_store_spills_and_exits_three(local: Local) -> None:
    """Nothing is lost: the artefacts wait in the spill folder, and the exit code says so."""
    done = local.nbjobs("run", str(EXAMPLES / "report.ipynb"), "--store", "/proc/no-store-here")
    assert done.returncode == 3, done.stderr
    assert "report.ipynb: completed" in done.stdout
    assert "spill folder" in done.stderr and "nbjobs retry-uploads" in done.stderr
    assert "Traceback" not in done.stderr
    spilled = list((local.home / "spill").glob("*/notebook.ipynb"))
    assert spilled, list(local.home.rglob("*"))[:20]


def test_a_memory_limit_stops_the_cell_that_reaches_it_and_loses_nothing(local: Local) -> None:
    """``nbjobs run --memory-limit``: the run fails naming the cell, in one line; the
    partial notebook and every cell's memory are stored; the kernel was interrupted, not
    left to the OOM killer."""
    done = local.nbjobs(
        "run", str(DATA / "grows.ipynb"), "--memory-limit", "300MiB", "-p", "pause", "0.3",
        "--json",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    error = result["error"]
    assert (error["name"], error["cell_index"]) == ("MemoryLimitError", 4)
    assert re.fullmatch(r"cell 4 used \d+ MiB of its 300 MiB limit", error["message"])
    assert "KeyboardInterrupt" in error["traceback"]  # interrupted, not killed
    cells = {c["index"]: c for c in result["cells"]}
    assert [cells[i]["status"] for i in range(8)] == ["ok"] * 4 + ["error"] + ["not_run"] * 3
    assert cells[2]["peak_memory_bytes"] < cells[3]["peak_memory_bytes"]
    assert cells[4]["peak_memory_bytes"] >= 300 * 1024 * 1024
    partial = json.loads(Path(result["artefacts"]["notebook"]).read_text())
    stopped = [
        c for c in partial["cells"] if c.get("metadata", {}).get("nbjobs", {}).get("index") == 4
    ]
    assert stopped[0]["outputs"][-1]["ename"] == "MemoryLimitError"
    # the run's page: its state says why, its summary shows each cell's memory
    api = local.api()
    run = api.flow_run(result["flow_run_id"])
    assert run["state"]["message"] == f"MemoryLimitError: {error['message']}"
    summary = next(a["data"] for k, a in api.artifacts(run["id"]).items() if k.endswith("-summary"))
    assert "| cell | status | seconds | peak memory | CPU s |" in summary
    assert re.search(r"\| 4 \| error \| [\d.]+ \| \d+ MiB \| [\d.]+ \|", summary), summary
    # a deployment's limit holds for every run of it, triggered over HTTP
    done = local.nbjobs("deploy", str(DATA / "grows.ipynb"), "--name", "grows", "--memory-limit",
                        "300MiB")  # fmt: skip
    assert done.returncode == 0, done.stderr
    deployed = api.trigger("run-notebook", "grows", {"parameters": {"pause": 0.3}})
    ended = api.wait(deployed, 120)
    assert ended["state"]["type"] == "FAILED"
    assert re.fullmatch(
        r"MemoryLimitError: cell 4 used \d+ MiB of its 300 MiB limit", ended["state"]["message"]
    )


def printed_seed(notebook: Path) -> float:
    """What cell 1 of ``needs_file.ipynb`` printed: the random state a repair keeps."""
    cells = json.loads(notebook.read_text())["cells"]
    (cell,) = [c for c in cells if c.get("metadata", {}).get("nbjobs", {}).get("index") == 1]
    return float("".join(cell["outputs"][0]["text"]))


def test_a_failed_run_goes_on_in_its_kept_kernel_and_cold_once_it_is_gone(
    local: Local, tmp_path: Path
) -> None:
    """``nbjobs repair``: cell 3 fails for a missing file; the file is written; the repair
    goes on in the kernel the worker kept (cell 1's random value is the same), and with
    no kernel kept it runs cells 0 to 2 again first. The runs link each other."""
    shutil.copy(DATA / "needs_file.ipynb", tmp_path)
    notebook = tmp_path / "needs_file.ipynb"
    done = local.nbjobs("run", str(notebook))
    assert done.returncode == 1, done.stderr
    found = re.search(r"once fixed, go on from cell 3: nbjobs repair ([0-9a-f-]{36})", done.stdout)
    assert found, done.stdout
    failed_id = found.group(1)
    api = local.api()
    failed_summary = next(
        a["data"] for k, a in api.artifacts(failed_id).items() if k.endswith("-summary")
    )
    assert f"`nbjobs repair {failed_id}`" in failed_summary
    failed = api.result(failed_id)
    (tmp_path / "input.txt").write_text("fixed\n")

    warm = local.nbjobs("repair", failed_id, "--json")
    assert warm.returncode == 0, warm.stderr
    repaired = json.loads(warm.stdout)
    assert repaired["repaired_from"] == {"flow_run_id": failed_id, "from_cell": 3, "mode": "warm"}
    assert repaired["notebook"] == "needs_file.ipynb"
    assert repaired["outputs"]["text"] == "fixed\n"
    seed = printed_seed(Path(failed["artefacts"]["notebook"]))
    assert repaired["outputs"]["seed"] == seed  # the same kernel: cell 1 did not run again
    assert [c["status"] for c in repaired["cells"]] == ["ok"] * 5
    assert not any(c["re_executed"] for c in repaired["cells"])
    # the notebook is whole: cell 1's output is the failed run's, cell 4's the repair's
    assert printed_seed(Path(repaired["artefacts"]["notebook"])) == seed
    # both runs say so: a tag and the summary on the repair, a link on the failed run
    # (published after result.json, which the command reports: its run's end says done)
    api.wait(repaired["flow_run_id"], 120)
    assert f"repair-of:{failed_id}" in api.flow_run(repaired["flow_run_id"])["tags"]
    summary = next(
        a["data"]
        for k, a in api.artifacts(repaired["flow_run_id"]).items()
        if k.endswith("-summary")
    )
    assert f"**Repair** of run [{failed_id}]" in summary and "in its kernel, kept alive" in summary
    links = api.request(
        "POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [failed_id]}}}
    ).json()
    assert any(repaired["flow_run_id"] in (a["data"] or "") for a in links)

    # a run over HTTP keeps no kernel (only `nbjobs run` asks for it): its repair, asked
    # over HTTP as the UI's Run form asks for it, runs cells 0 to 2 again, then the rest
    (tmp_path / "input.txt").unlink()
    run = {"notebook": str(notebook), "cwd": str(tmp_path)}
    second_id = api.trigger("run-notebook", "adhoc", run)
    assert api.wait(second_id, 120)["state"]["type"] == "FAILED"
    second = api.result(second_id)
    (tmp_path / "input.txt").write_text("fixed again\n")
    repair_id = api.trigger("run-notebook", "adhoc", {"repair_of": second_id})
    assert api.wait(repair_id, 120)["state"]["type"] == "COMPLETED"
    repaired = api.result(repair_id)
    assert repaired["repaired_from"]["mode"] == "cold"
    assert [c["re_executed"] for c in repaired["cells"]] == [True] * 3 + [False] * 2
    rebuilt = printed_seed(Path(repaired["artefacts"]["notebook"]))
    assert (
        repaired["outputs"]["seed"]
        == rebuilt
        != printed_seed(Path(second["artefacts"]["notebook"]))
    )
    assert repaired["outputs"]["text"] == "fixed again\n"


def notebook_json(*sources: str) -> dict[str, Any]:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    return dict(notebook)


def test_a_warm_repair_of_a_run_in_its_own_folder_keeps_the_files_it_wrote(local: Local) -> None:
    """Over HTTP, a run in a folder of its own that asked to keep its kernel: the repair
    (with a fixed notebook) goes on in that kernel, in a folder of its own, where the
    files the first run wrote are too."""
    assert local.nbjobs("server", "start").returncode == 0  # (when this test runs alone)
    api = local.api()
    broken = notebook_json(
        'open("state.txt", "w").write("from cell 0")',
        'raise RuntimeError("broken")',
        'print(open("state.txt").read())',
    )
    failed_id = api.trigger(
        "run-notebook", "adhoc", {"notebook": broken, "keep_failed_kernel": "10m"}
    )
    assert api.wait(failed_id, 120)["state"]["type"] == "FAILED"
    fixed = notebook_json(broken["cells"][0]["source"], "pass", broken["cells"][2]["source"])
    repair_id = api.trigger("run-notebook", "adhoc", {"repair_of": failed_id, "notebook": fixed})
    assert api.wait(repair_id, 120)["state"]["type"] == "COMPLETED"
    repaired = api.result(repair_id)
    assert repaired["repaired_from"]["mode"] == "warm"
    executed = json.loads(Path(repaired["artefacts"]["notebook"]).read_text())
    (cell,) = [c for c in executed["cells"] if c["metadata"]["nbjobs"].get("index") == 2]
    assert "".join(cell["outputs"][0]["text"]) == "from cell 0\n"


def test_a_killed_worker_is_started_again(local: Local) -> None:
    before = local.started()
    psutil.Process(before["worker_pid"]).kill()
    psutil.Process(before["worker_pid"]).wait(30)
    done = local.nbjobs("run", str(EXAMPLES / "report.ipynb"))
    assert done.returncode == 0, done.stderr
    assert f"the local worker (pid {before['worker_pid']}) is no longer running" in done.stderr
    after = local.status()
    assert after["server_pid"] == before["server_pid"]
    assert after["worker_pid"] not in (None, before["worker_pid"])


def test_stop_leaves_no_process_behind_and_a_stale_pid_is_restarted(local: Local) -> None:
    status = local.started()
    pids = (status["server_pid"], status["worker_pid"], status["postgres_pid"])
    started = [psutil.Process(pid) for pid in pids]
    family = started + [child for p in started for child in p.children(recursive=True)]
    assert any("kernel" in " ".join(p.cmdline()) for p in family)  # warm kernels are there
    assert any("postgres: checkpointer" in " ".join(p.cmdline()) for p in family)
    history = local.api().request("POST", "/flow_runs/count", json={}).json()
    # a link of a run's summary, opened as a browser opens it: the file server closes
    # the connection, so its port lingers in TIME_WAIT through the stop below
    done = local.nbjobs("run", str(EXAMPLES / "report.ipynb"), "--json")
    link = json.loads(done.stdout)["artefacts"]["links"]["notebook"]
    with urllib.request.urlopen(link, timeout=30) as answer:
        before = answer.read()
    history += 1
    done = local.nbjobs("server", "stop")
    assert done.returncode == 0 and "stopped worker" in done.stdout and "server" in done.stdout
    assert f"PostgreSQL (pid {status['postgres_pid']})" in done.stdout
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    assert not local.status()["running"]
    # a state file that names a server which died: said, and started again
    state_file = local.home / "server" / "state.json"
    state = json.loads(state_file.read_text())
    state.update(server_pid=status["server_pid"], server_started=0.0)
    state_file.write_text(json.dumps(state))
    done = local.nbjobs("run", str(EXAMPLES / "report.ipynb"))
    assert done.returncode == 0, done.stderr
    assert f"local Prefect server (pid {status['server_pid']}) is no longer running" in done.stderr
    assert "first start" not in done.stderr  # the database is there already
    # the history survived the stop and the restart, on the same PostgreSQL data
    after = local.api().request("POST", "/flow_runs/count", json={}).json()
    assert history > 0 and after == history + 1
    # and so did the links in earlier summaries: the file server has its port again
    assert local.status()["files_url"] == status["files_url"]
    with urllib.request.urlopen(link, timeout=30) as answer:
        assert answer.read() == before


def test_with_prefect_api_url_set_no_local_server_starts(
    prefect_server: str, tmp_path: Path
) -> None:
    env = {**clean_env(tmp_path), "PREFECT_API_URL": prefect_server}
    done = subprocess.run(
        [NBJOBS, "run", str(EXAMPLES / "report.ipynb"), "-p", "n", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "output total = 5" in done.stdout
    assert not (tmp_path / "server").exists()
    # (the page in whichever UI that server opens by default)
    found = re.search(r"in the Prefect UI: http://\S+/runs/flow-run/([0-9a-f-]+)", done.stdout)
    assert found, done.stdout
    assert PrefectHTTP(prefect_server).flow_run(found.group(1))["state"]["type"] == "COMPLETED"


def test_an_unwritable_home_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    env = clean_env(tmp_path / "a-file" / "home")
    done = subprocess.run(
        [NBJOBS, "run", str(EXAMPLES / "report.ipynb")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 4
    assert (
        done.stderr.count("\n") == 1 and "set NBJOBS_HOME to a folder you can write" in done.stderr
    )


def test_a_database_of_a_newer_prefect_is_one_clear_line(tmp_path: Path) -> None:
    database = tmp_path / "server" / "prefect" / "prefect.db"
    database.parent.mkdir(parents=True)
    with sqlite3.connect(database) as db:
        db.execute("create table alembic_version (version_num varchar(32) primary key)")
        db.execute("insert into alembic_version values ('ffffffffffff')")
    done = subprocess.run(
        [NBJOBS, "server", "start"],
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 4
    last = done.stderr.strip().splitlines()[-1]
    assert "written by a newer Prefect" in last and str(tmp_path / "server" / "server.log") in last
    assert "Traceback" not in done.stderr
    assert not json.loads((tmp_path / "server" / "state.json").read_text())["server_pid"]


def imported_modules(args: list[str], env: dict[str, str]) -> tuple[int, set[str]]:
    """Run ``nbjobs ARGS`` under ``python -X importtime``: its exit code and what it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "notebook_jobs.deployments.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    modules = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    return done.returncode, modules


def test_nbjobs_run_on_the_local_server_imports_no_prefect(local: Local) -> None:
    code, modules = imported_modules(["run", str(EXAMPLES / "report.ipynb")], local.env)
    assert code == 0
    assert not {m for m in modules if m.split(".")[0] in ("prefect", "papermill", "httpx")}


@pytest.mark.parametrize(
    "args",
    [["--help"], ["run"], ["inspect", str(EXAMPLES / "report.ipynb")], ["server", "--help"]],
    ids=["help", "argument-error", "inspect", "server-help"],
)
def test_light_commands_import_no_prefect(args: list[str], tmp_path: Path) -> None:
    code, modules = imported_modules(args, clean_env(tmp_path))
    assert code in (0, 2)
    assert not {m for m in modules if m.split(".")[0] in ("prefect", "papermill", "nbformat")}
    assert not (tmp_path / "server").exists()  # nothing was started


def test_a_port_in_use_is_skipped_and_said(tmp_path: Path) -> None:
    import socket

    from notebook_jobs.deployments.local_server import LocalServer, ServerState

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said: list[str] = []
        chosen = LocalServer(tmp_path)._pick_port(ServerState(port=port), said.append)
    assert chosen != port
    assert said == [f"port {port} is in use by another program; the local server uses {chosen}"]


def test_two_homes_started_at_the_same_moment_both_come_up_and_serve(tmp_path: Path) -> None:
    """Each picks the first free port; the one whose server loses the port to the other
    between the check and the bind starts again on the next (the worker's file server
    port is bound by its starter and handed over, so it cannot be lost)."""
    homes = [Local(tmp_path / name, clean_env(tmp_path / name)) for name in ("a", "b")]
    try:
        starts = [
            subprocess.Popen(
                [NBJOBS, "server", "start"],
                env=home.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for home in homes
        ]
        for start in starts:
            _, stderr = start.communicate(timeout=RUN_TIMEOUT_SECONDS)
            assert start.returncode == 0, stderr
        statuses = [home.status() for home in homes]
        assert all(status["running"] for status in statuses)
        assert len({s["api_url"] for s in statuses}) == len({s["files_url"] for s in statuses}) == 2
        for home in homes:
            done = home.nbjobs("run", str(EXAMPLES / "report.ipynb"), "-p", "n", "3")
            assert done.returncode == 0, done.stderr
            assert "output total = 14" in done.stdout
    finally:
        for home in homes:
            home.nbjobs("server", "stop", timeout=120)


def test_the_ui_is_pointed_at_the_port_the_server_got(tmp_path: Path) -> None:
    """Prefect's UI calls port 4200 unless told: on any other port every page is blank."""
    from notebook_jobs.deployments.local_server import LocalServer, ServerState

    server = LocalServer(tmp_path)
    env = server._child_env(ServerState(port=4207, auth=False))
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4207/api"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4207/api"
    assert env["PREFECT_HOME"] == str(tmp_path.resolve() / "server" / "prefect")
    assert "PREFECT_SERVER_API_AUTH_STRING" not in env  # --no-auth
    server.dir.mkdir(parents=True)
    login = server.credentials.make()
    env = server._child_env(ServerState(port=4207), server=True)
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == env["PREFECT_API_AUTH_STRING"] == login
    # the worker sends the credentials; only the server needs to check them
    env = server._child_env(ServerState(port=4207))
    assert env["PREFECT_API_AUTH_STRING"] == login
    assert "PREFECT_SERVER_API_AUTH_STRING" not in env


ENVIRONMENT_NOTEBOOK = """
import os
from IPython.display import display
def glue(name, value):
    display({"application/scrapbook.scrap.json+json": {"name": name, "data": value,
             "encoder": "json", "version": 1}}, raw=True,
            metadata={"scrapbook": {"name": name, "data": True, "display": False}})
glue("from_caller", os.environ.get("FROM_CALLER", "unset"))
glue("prefect_login", os.environ.get("PREFECT_API_AUTH_STRING", "unset"))
try:
    import callers_module
    glue("module", callers_module.WHERE)
except ImportError:
    glue("module", "not importable")
"""


def test_the_callers_environment_reaches_the_kernel_and_never_an_http_run(
    local: Local, tmp_path: Path
) -> None:
    """``FROM_CALLER=bar nbjobs run`` on a server started without it: the kernel has it,
    as papermill's would, in a pre-started kernel and in one spawned for a PYTHONPATH;
    a run of the same deployment over HTTP gets the worker's environment only."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(ENVIRONMENT_NOTEBOOK)])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Py"}
    path = tmp_path / "environment.ipynb"
    nbformat.write(nb, path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "callers_module.py").write_text("WHERE = 'on the caller PYTHONPATH'\n")
    assert "FROM_CALLER" not in local.env
    started = local.nbjobs("server", "start")  # without it (the first command's own, else)
    assert started.returncode == 0, started.stderr

    def run(env: dict[str, str]) -> dict[str, Any]:
        done = subprocess.run(
            [NBJOBS, "run", str(path), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_SECONDS,
        )
        assert done.returncode == 0, done.stderr
        outputs: dict[str, Any] = json.loads(done.stdout)["outputs"]
        return outputs

    pooled = run({**local.env, "FROM_CALLER": "bar"})
    assert pooled == {"from_caller": "bar", "prefect_login": "unset", "module": "not importable"}
    spawned = run({**local.env, "FROM_CALLER": "baz", "PYTHONPATH": str(tmp_path / "lib")})
    assert spawned["from_caller"] == "baz" and spawned["module"] == "on the caller PYTHONPATH"
    assert run(local.env)["from_caller"] == "unset"  # nothing stays behind in the worker
    with local.api() as api:
        run_id = api.trigger("run-notebook", "adhoc", {"notebook": str(path)}, tags=["trigger:api"])
        assert api.wait(run_id)["state"]["type"] == "COMPLETED"
        assert api.result(run_id)["outputs"]["from_caller"] == "unset"
