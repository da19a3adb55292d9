"""JupyterLab's Notebook Jobs on notebook-jobs, through jupyter-scheduler's REST API.

A real ``jupyter lab``, started by ``nbjobs lab`` with no setting of ours, on the local
server as a user has it; every call is one the extension's frontend makes
(``/scheduler/jobs``, ``/scheduler/job_definitions``), and what it says is checked
against Prefect's own API: the same runs, the same deployments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from notebook_jobs.deployments.api import PrefectHTTP
from tests.browser import chromium as chromium_page
from tests.conftest import DATA, EXAMPLES, service
from tests.deployments.conftest import NBJOBS, Local, clean_env
from tests.processes import free_port, stop

pytest.importorskip("jupyter_scheduler", reason="notebook-jobs[jupyterlab] is not installed")

TOKEN = "lab-test-token"
DONE = {"COMPLETED", "FAILED", "STOPPED"}


@dataclass
class Lab:
    url: str
    root: Path
    local: Local

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One call as the frontend makes it; the status and the JSON answer (if any)."""
        request = urllib.request.Request(
            f"{self.url}/scheduler/{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                text = answer.read()
                return answer.status, json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        assert status in (200, 204), (status, answer)
        return answer

    def until(self, path: str, done: Callable[[Any], bool], timeout: float = 180) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            answer = self.ok("GET", path)
            if done(answer):
                return answer
            assert time.monotonic() < deadline, f"{path} still {answer}"
            time.sleep(0.5)

    def prefect(self) -> PrefectHTTP:
        return self.local.api()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """``nbjobs lab`` in a folder of notebooks, on a local server of its own."""
    home = tmp_path_factory.mktemp("lab-home")
    root = tmp_path_factory.mktemp("lab-root")
    for notebook in (EXAMPLES / "report.ipynb", DATA / "sleeps.ipynb", DATA / "secret.ipynb"):
        shutil.copy(notebook, root)
    (root / "team").mkdir()
    shutil.copy(EXAMPLES / "report.ipynb", root / "team" / "weekly.ipynb")
    env = {
        **clean_env(home),
        # the user's own Jupyter settings and state stay out; the environment's stay in
        "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
    }
    # no "get notified about Jupyter news?" toast over the screenshots
    news = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port = free_port()
    log = open(home / "lab.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [
            NBJOBS,
            "lab",
            "--no-browser",
            "--allow-root",  # CI runs as root
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=root,
    )
    found = Lab(f"http://127.0.0.1:{port}", root, Local(home, env))
    try:
        deadline = time.monotonic() + 240  # the first start of the local server comes first
        while not _answers(found):
            assert process.poll() is None, (home / "lab.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (home / "lab.log").read_text()[-3000:]
            time.sleep(0.5)
        yield found
    finally:  # a lab that never answered has started the local server all the same
        stop(process)
        log.close()
        found.local.nbjobs("server", "stop", timeout=120)


def _answers(lab: Lab) -> bool:
    try:
        return lab.call("GET", "config")[0] == 200
    except OSError:  # not listening yet (URLError is an OSError)
        return False


def test_jupyter_lab_uses_our_backend_with_no_setting(lab: Lab) -> None:
    features = lab.ok("GET", "config")["supported_features"]
    assert features["job_definition"] and features["stop_job"] and features["parameters"]
    environments = lab.ok("GET", "runtime_environments")
    names = [e["name"] for e in environments]
    assert names[0] == "notebook" and "python3" in names
    assert environments[0]["compute_types"][0] == "Local worker"
    assert {f["name"] for f in environments[0]["output_formats"]} == {"ipynb", "html"}
    # no database of jobs beside Prefect's: jupyter-scheduler's own is in memory
    assert not list(lab.local.home.rglob("scheduler.sqlite"))


def test_a_job_with_parameters_is_a_completed_flow_run_with_its_outputs(lab: Lab) -> None:
    created = lab.ok(
        "POST",
        "jobs",
        {
            "input_uri": "report.ipynb",
            "runtime_environment_name": "notebook",
            "name": "squares to four",
            "output_formats": ["ipynb", "html"],
            "parameters": {"n": "4", "label": "007"},  # label is a str: 007 stays 007
            "compute_type": "Local worker",
            "tags": ["from-the-dialog"],
        },
    )
    job_id = created["job_id"]
    job = lab.until(f"jobs/{job_id}", lambda j: j["status"] in DONE)
    assert job["status"] == "COMPLETED", job
    assert job["name"] == "squares to four" and job["input_filename"] == "report.ipynb"
    assert job["parameters"] == {"n": "4", "label": "007"}
    # the same run in Prefect: its id, its name, the typed parameters
    with lab.prefect() as api:
        run = api.flow_run(job_id)
        assert run["state"]["type"] == "COMPLETED" and run["name"] == "squares to four"
        assert run["parameters"]["parameters"] == {"n": 4, "label": "007"}
        assert {"trigger:jupyterlab", "from-the-dialog"} <= set(run["tags"])
        assert job["url"].endswith(f"/runs/flow-run/{job_id}")
        stored = api.result(job_id)["artefacts"]
    listed = lab.ok("GET", "jobs?sort_by=desc(create_time)")
    assert job_id in [j["job_id"] for j in listed["jobs"]]
    # download: the stored executed notebook, HTML, input and written files, where the
    # panel's links point
    assert not any(f.get("file_path") for f in job["job_files"])
    lab.ok("GET", f"jobs/{job_id}/download_files")
    job = lab.ok("GET", f"jobs/{job_id}")
    files = {f["file_format"]: f.get("file_path") for f in job["job_files"]}
    assert all(files.values()) and job["downloaded"], job["job_files"]
    executed = (lab.root / files["ipynb"]).read_bytes()
    assert executed == Path(stored["notebook"]).read_bytes()
    cells = json.loads(executed)["cells"]
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    assert any("".join(o.get("data", {}).get("text/plain", "")) == "30" for o in outputs)
    assert any("007: wrote 4 rows" in "".join(o.get("text", "")) for o in outputs)
    assert (lab.root / files["html"]).read_bytes() == Path(stored["html"]).read_bytes()
    assert (lab.root / Path(files["ipynb"]).parent / "files" / "007.csv").exists()


def test_bad_input_is_one_line_and_no_run(lab: Lab) -> None:
    with lab.prefect() as api:
        before = api.request("POST", "/flow_runs/count", json={}).json()
    base = {"runtime_environment_name": "notebook", "name": "bad", "output_formats": ["ipynb"]}
    cases = [
        ({"input_uri": "missing.ipynb"}, "notebook not found: missing.ipynb"),
        (
            {"input_uri": "report.ipynb", "parameters": {"n": "four"}},
            "parameter 'n': 'four' is not an int (the notebook's parameters cell declares n: int)",
        ),
        (
            {"input_uri": "report.ipynb", "compute_type": "GPU farm"},
            "compute type 'GPU farm' is not one of notebook-jobs'",
        ),
        ({"input_uri": "../outside.ipynb"}, "is outside the Jupyter root"),
        # a value typed for a `# secret` parameter never reaches Prefect
        ({"input_uri": "secret.ipynb", "parameters": {"password": "hunter2"}}, "secret"),
    ]
    for fields, said in cases:
        status, answer = lab.call("POST", "jobs", {**base, **fields})
        assert status == 500 and said in answer["message"], answer
        assert "\n" not in answer["message"] and "Traceback" not in answer["message"]
        assert "hunter2" not in answer["message"]
    status, answer = lab.call("GET", "jobs?next_token=not-ours")
    assert (
        status == 500 and answer["message"] == "next_token 'not-ours' is not one notebook-jobs gave"
    )
    with lab.prefect() as api:
        assert api.request("POST", "/flow_runs/count", json={}).json() == before
        assert "hunter2" not in json.dumps(api.flow_runs({}))


def test_stopping_a_running_job_cancels_its_flow_run_and_delete_keeps_the_store(
    lab: Lab,
) -> None:
    job_id = lab.ok(
        "POST",
        "jobs",
        {
            "input_uri": "sleeps.ipynb",
            "runtime_environment_name": "notebook",
            "name": "sleeper",
            "parameters": {"seconds": "60"},
        },
    )["job_id"]
    lab.until(f"jobs/{job_id}", lambda j: j["status"] == "IN_PROGRESS")
    assert lab.ok("GET", "jobs/count?status=IN_PROGRESS")["count"] >= 1
    lab.ok("PATCH", f"jobs/{job_id}", {"status": "STOPPED"})
    job = lab.until(f"jobs/{job_id}", lambda j: j["status"] in DONE, timeout=60)
    assert job["status"] == "STOPPED", job
    with lab.prefect() as api:
        assert api.flow_run(job_id)["state"]["type"] == "CANCELLED"
        stored = api.result(job_id)["artefacts"]  # the partial notebook is kept
    assert Path(stored["notebook"]).exists()
    lab.ok("DELETE", f"jobs/{job_id}")
    status, answer = lab.call("GET", f"jobs/{job_id}")
    assert status == 500 and answer["message"] == "no such job: it was deleted in Prefect"
    assert Path(stored["notebook"]).exists()  # deleting the job leaves the store alone


def test_a_job_definition_is_a_scheduled_deployment_paused_edited_and_deleted(lab: Lab) -> None:
    created = lab.ok(
        "POST",
        "job_definitions",
        {
            "input_uri": "report.ipynb",
            "runtime_environment_name": "notebook",
            "name": "report-every-minute",
            "output_formats": ["ipynb", "html"],
            "parameters": {"n": "2"},
            "schedule": "* * * * *",
            "timezone": "Europe/Berlin",
        },
    )
    definition_id = created["job_definition_id"]
    api = lab.prefect()
    deployment = api.request("GET", f"/deployments/{definition_id}").json()
    assert deployment["name"] == "report-every-minute" and not deployment["paused"]
    assert deployment["schedules"][0]["schedule"]["cron"] == "* * * * *"
    assert deployment["schedules"][0]["schedule"]["timezone"] == "Europe/Berlin"
    assert deployment["parameters"]["parameters"]["n"] == 2
    shown = lab.ok("GET", f"job_definitions/{definition_id}")
    assert shown["schedule"] == "* * * * *" and shown["active"] and shown["parameters"]["n"] == "2"
    assert definition_id in [
        d["job_definition_id"] for d in lab.ok("GET", "job_definitions")["job_definitions"]
    ]
    # the next minute's run, in JupyterLab's list and in Prefect's, as the same run
    jobs = lab.until(
        f"jobs?job_definition_id={definition_id}",
        lambda a: any(j["status"] == "COMPLETED" for j in a["jobs"]),
        timeout=150,
    )["jobs"]
    done = [j for j in jobs if j["status"] == "COMPLETED"]
    assert all(j["job_definition_id"] == definition_id for j in jobs)
    runs = api.flow_runs(
        {
            "flow_runs": {
                "deployment_id": {"any_": [definition_id]},
                "state": {"type": {"any_": ["COMPLETED"]}},
            }
        }
    )
    assert {j["job_id"] for j in done} <= {r["id"] for r in runs}
    # pause, edit, resume: the deployment's
    lab.ok("PATCH", f"job_definitions/{definition_id}", {"active": False})
    assert api.request("GET", f"/deployments/{definition_id}").json()["paused"]
    lab.ok(
        "PATCH",
        f"job_definitions/{definition_id}",
        {"schedule": "30 6 * * 1-5", "timezone": "UTC", "parameters": {"n": "3"}},
    )
    deployment = api.request("GET", f"/deployments/{definition_id}").json()
    assert deployment["paused"], "an edit keeps a paused definition paused"
    assert deployment["schedules"][0]["schedule"]["cron"] == "30 6 * * 1-5"
    assert deployment["parameters"]["parameters"]["n"] == 3
    status, answer = lab.call(
        "PATCH", f"job_definitions/{definition_id}", {"parameters": {"n": "three"}}
    )
    assert status == 500 and "is not an int" in answer["message"]
    lab.ok("PATCH", f"job_definitions/{definition_id}", {"active": True})
    assert not api.request("GET", f"/deployments/{definition_id}").json()["paused"]
    # "Run job" on the definition: a run of the deployment, with the edited default
    job_id = lab.ok("POST", f"job_definitions/{definition_id}/jobs", {})["job_id"]
    job = lab.until(f"jobs/{job_id}", lambda j: j["status"] in DONE)
    assert job["status"] == "COMPLETED" and job["job_definition_id"] == definition_id
    assert api.flow_run(job_id)["parameters"]["parameters"]["n"] == 3
    # delete: the deployment goes, and its runs scheduled for later; what ran stays
    stored = api.result(job_id)["artefacts"]
    lab.ok("DELETE", f"job_definitions/{definition_id}")
    later = {"deployment_id": {"any_": [definition_id]}, "state": {"type": {"any_": ["SCHEDULED"]}}}
    assert api.flow_runs({"flow_runs": later}) == []
    assert api.flow_run(job_id)["state"]["type"] == "COMPLETED"
    assert Path(stored["notebook"]).exists()
    status, _ = lab.call("GET", f"job_definitions/{definition_id}")
    assert status == 500
    assert definition_id not in [
        d["job_definition_id"] for d in lab.ok("GET", "job_definitions")["job_definitions"]
    ]
    api.close()


def test_runs_made_elsewhere_for_the_same_notebook_are_listed(lab: Lab) -> None:
    done = lab.local.nbjobs("run", str(lab.root / "report.ipynb"), "-p", "n", "1", "--json")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["flow_run_id"]
    # nbjobs run exits on the stored result; the run's state follows a moment later
    listed = lab.until("jobs", lambda a: any(j["job_id"] == run_id for j in a["jobs"]))
    assert lab.until(f"jobs/{run_id}", lambda j: j["status"] in DONE)["status"] == "COMPLETED"
    job = next(j for j in listed["jobs"] if j["job_id"] == run_id)
    assert job["input_filename"] == "report.ipynb"
    assert "trigger:cli" in job["tags"] and job["parameters"] == {"n": "1"}


def test_deleting_a_running_job_stops_it_before_its_record_goes(lab: Lab) -> None:
    job_id = lab.ok(
        "POST",
        "jobs",
        {
            "input_uri": "sleeps.ipynb",
            "runtime_environment_name": "notebook",
            "name": "deleted while it sleeps",
            "parameters": {"seconds": "120"},
        },
    )["job_id"]
    lab.until(f"jobs/{job_id}", lambda j: j["status"] == "IN_PROGRESS")
    lab.ok("DELETE", f"jobs/{job_id}")
    # the run ended (cancelled: its partial notebook stored) before the flow run went
    folder = lab.local.home / "artefacts" / "run-notebook" / job_id
    assert (folder / "notebook.ipynb").exists(), sorted(folder.parent.glob("*"))
    status, _ = lab.call("GET", f"jobs/{job_id}")
    assert status == 500


def test_the_edit_form_keeps_a_notebook_in_a_subfolder_and_refuses_what_it_cannot_keep(
    lab: Lab,
) -> None:
    definition_id = lab.ok(
        "POST",
        "job_definitions",
        {
            "input_uri": "team/weekly.ipynb",
            "runtime_environment_name": "notebook",
            "name": "weekly",
            "schedule": "0 6 * * 1",
            "timezone": "UTC",
        },
    )["job_definition_id"]
    with lab.prefect() as api:
        before = api.request("GET", f"/deployments/{definition_id}").json()
        # the Edit form sends the file name back as input_uri, with the schedule
        lab.ok(
            "PATCH",
            f"job_definitions/{definition_id}",
            {"input_uri": "weekly.ipynb", "schedule": "0 7 * * 1", "timezone": "UTC"},
        )
        after = api.request("GET", f"/deployments/{definition_id}").json()
        assert after["schedules"][0]["schedule"]["cron"] == "0 7 * * 1"
        assert after["parameters"]["notebook"] == before["parameters"]["notebook"]
    # a deployment with settings the form has no field for: edited with nbjobs deploy
    done = lab.local.nbjobs(
        "deploy",
        str(lab.root / "report.ipynb"),
        "--name",
        "report-opened",
        "--cron",
        "0 6 * * *",
        "--allow",
        "timeout_seconds",
    )
    assert done.returncode == 0, done.stderr
    [opened] = [
        d
        for d in lab.ok("GET", "job_definitions")["job_definitions"]
        if d["name"] == "report-opened"
    ]
    status, answer = lab.call(
        "PATCH", f"job_definitions/{opened['job_definition_id']}", {"schedule": "0 8 * * *"}
    )
    assert status == 500 and answer["message"] == (
        "report-opened has settings this form cannot keep (nbjobs-allow:timeout_seconds); "
        "change it with nbjobs deploy"
    )
    for made in (definition_id, opened["job_definition_id"]):
        lab.ok("DELETE", f"job_definitions/{made}")


def test_the_backend_imports_no_prefect_into_the_jupyter_server() -> None:
    modules = ["scheduler", "environments", "files"]
    code = (
        "import sys\n"
        + "".join(f"import notebook_jobs.deployments.lab.{m}\n" for m in modules)
        + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_file_a_run_names_outside_its_folder_is_refused(tmp_path: Path) -> None:
    from jupyter_scheduler.exceptions import SchedulerError

    from notebook_jobs.deployments.lab.files import inside

    assert inside(tmp_path, "files/out.csv") == tmp_path / "files" / "out.csv"
    for name in ("../../.bashrc", "/etc/passwd", "files/../../x"):
        with pytest.raises(SchedulerError, match="outside its folder"):
            inside(tmp_path, name)


def test_compute_types_are_a_queue_and_a_slurm_cluster_made_as_users_make_them(
    lab: Lab, slurm_partition: str, tmp_path: Path
) -> None:
    status = lab.local.status()
    with lab.prefect() as api:
        api.request("POST", "/work_pools/notebook-jobs/queues", json={"name": "urgent"})
    save = (
        "from notebook_jobs.blocks.slurm import SlurmCluster\n"
        f"SlurmCluster(work_dir={str(tmp_path / 'shared')!r}, partition={slurm_partition!r},"
        " poll_interval_seconds=0.5, max_poll_interval_seconds=2).save('lab-slurm', overwrite=True)"
    )
    env = {
        **lab.local.env,
        "PREFECT_API_URL": status["api_url"],
        "PREFECT_API_AUTH_STRING": status["login"],
    }
    done = subprocess.run([sys.executable, "-c", save], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    choices = lab.ok("GET", "runtime_environments")[0]["compute_types"]
    assert choices[0] == "Local worker"
    assert {"Queue: urgent", "Slurm: lab-slurm"} <= set(choices), choices
    for compute in ("Queue: urgent", "Slurm: lab-slurm"):
        job_id = lab.ok(
            "POST",
            "jobs",
            {
                "input_uri": "report.ipynb",
                "runtime_environment_name": "notebook",
                "name": f"on {compute}",
                "parameters": {"n": "3"},
                "compute_type": compute,
            },
        )["job_id"]
        job = lab.until(f"jobs/{job_id}", lambda j: j["status"] in DONE, timeout=300)
        assert job["status"] == "COMPLETED" and job["compute_type"] == compute, job
        with lab.prefect() as api:
            run = api.flow_run(job_id)
            if compute.startswith("Queue"):
                assert run["work_queue_name"] == "urgent"
            else:
                assert run["parameters"]["cluster"] == "lab-slurm"
                assert api.result(job_id)["slurm"]["job_id"]  # it ran as a Slurm job


def test_the_dialog_creates_a_job_and_the_panel_shows_it_completed(lab: Lab) -> None:
    """As a user does it: the notebook's toolbar button, the dialog filled and sent,
    the Notebook Jobs panel reloaded until the job is Completed.

    ``NBJOBS_SCREENSHOTS=docs`` keeps the screenshots for the docs (docs/jupyterlab.md).
    """
    chromium = service("chromium.sh", "Chromium")
    shots = Path(os.environ.get("NBJOBS_SCREENSHOTS") or lab.local.home)
    name = f"squares from the dialog {time.monotonic_ns() % 10_000}"
    row = (
        "[...document.querySelectorAll('tr')].map(r => r.innerText)"
        f".find(t => t.includes({json.dumps(name)})) || ''"
    )
    with chromium_page(chromium, lab.local.home / "chromium") as page:
        page.open(f"{lab.url}/lab/tree/report.ipynb?token={TOKEN}")
        page.wait_for_text("Squares report", timeout=120)
        page.click('jp-button[title="Create a job"]')  # the notebook toolbar's button
        page.wait_for_text("Create Job")
        page.wait_for_text("Local worker")  # our compute types came
        page.fill("#jp-create-job-jobName", name)
        page.click('button[title="Add new parameter"]')
        page.fill('input[name="parameter-0-name"]', "n")
        page.fill('input[name="parameter-0-value"]', "5")
        page.screenshot(shots / "lab-create-job.png")
        page.click("button", text="Create")
        page.wait_for_text(f'Your job "{name}" has been created')
        deadline = time.monotonic() + 120
        while "Completed" not in page.evaluate(row):
            assert time.monotonic() < deadline, page.evaluate(row) or page.text()[-2000:]
            page.click("button", text="Reload")
            time.sleep(1)
        page.screenshot(shots / "lab-notebook-jobs.png")
        assert "report.ipynb" in page.evaluate(row)
        page.click("a", text=name)  # the job's page: its parameters, the run's UI link
        text = page.wait_for_text("prefect-ui:")  # the page fills in once the job came
        page.screenshot(shots / "lab-job-detail.png")
        assert "prefect-ui:http://127.0.0.1:" in text and "trigger:jupyterlab" in text
    # the same run in Prefect, with the dialog's parameter typed by the notebook
    with lab.prefect() as api:
        [run] = api.flow_runs({"flow_runs": {"name": {"any_": [name]}}})
        assert run["state"]["type"] == "COMPLETED"
        assert run["parameters"]["parameters"] == {"n": 5}
