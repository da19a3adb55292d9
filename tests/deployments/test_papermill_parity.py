"""``nbjobs run`` against papermill's own CLI: papermill is the oracle.

Each test writes a small notebook for one behaviour, runs ``papermill`` and ``nbjobs
run`` with the same arguments, each in a copy of the notebook's folder and from that
folder (as a cron line ``cd reports && papermill ...`` runs), and compares what a
user compares: the exit status (zero or not), whether OUTPUT was written, the
outputs of the code cells and the injected values. ``nbjobs run`` uses the local
server (the session's ``local`` fixture), as a user with no server configured does.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tests.conftest import service
from tests.deployments.conftest import NBJOBS, RUN_TIMEOUT_SECONDS, Local
from tests.oracle import NOTEBOOKS, PARAMETERS, seen

PAPERMILL = str(Path(sys.executable).parent / "papermill")


def notebook(folder: Path, *cells: str, parameters: str | None = None, **meta: Any) -> Path:
    """``folder/nb.ipynb``: an optional cell tagged ``parameters``, then ``cells``."""
    nb = new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "language": "python", "display_name": "Py"}
    nb.metadata.update(meta)
    if parameters is not None:
        nb.cells.append(new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    nb.cells += [new_code_cell(source) for source in cells]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nb.ipynb"
    nbformat.write(nb, path)
    return path


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    folder: Path

    def output(self, name: str = "out.ipynb") -> Any:
        path = self.folder / name
        return nbformat.read(path, as_version=4) if path.exists() else None


def run(tool: list[str], env: dict[str, str], source: Path, tag: str, *args: str) -> Outcome:
    """``tool`` on a copy of ``source``'s folder, run from that folder."""
    folder = source.parent.with_name(f"{source.parent.name}-{tag}")
    while folder.exists():  # a second run of the same tool on the same notebook
        folder = folder.with_name(folder.name + "-again")
    shutil.copytree(source.parent, folder)
    done = subprocess.run(
        [*tool, *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    return Outcome(done.returncode, done.stdout, done.stderr, folder)


def both(local: Local, source: Path, *args: str) -> tuple[Outcome, Outcome]:
    """papermill, then ``nbjobs run``, with the same arguments."""
    papermill = run([PAPERMILL], local.env, source, "papermill", *args)
    nbjobs = run([NBJOBS, "run"], local.env, source, "nbjobs", *args)
    return papermill, nbjobs


def same(papermill: Outcome, nbjobs: Outcome, output: str = "out.ipynb") -> Any:
    """Assert the two runs agree; return papermill's notebook."""
    assert (papermill.code == 0) == (nbjobs.code == 0), (papermill.stderr, nbjobs.stderr)
    expected, got = papermill.output(output), nbjobs.output(output)
    assert (expected is None) == (got is None), (papermill.stderr, nbjobs.stderr)
    if expected is not None:
        assert seen(got) == seen(expected)
        nbformat.validate(got)
    return expected


PRINT_ALL = (
    "for name in sorted(dir()):\n    if name.startswith('v_'): print(name, repr(globals()[name]))"
)


def test_p_values_are_typed_as_papermill_types_them(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", PRINT_ALL, parameters="v_a = 0")
    values = [("v_a", "007"), ("v_b", "1_000"), ("v_c", '"Hello"'), ("v_d", "true")]
    values += [("v_e", "None"), ("v_f", "True"), ("v_g", "[1, 2]"), ("v_h", "2.5")]
    args = [item for name, value in values for item in ("-p", name, value)]
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb", *args)
    expected = same(papermill, nbjobs)
    assert papermill.code == 0 and "v_c '\"Hello\"'" in expected.cells[-1].outputs[0].text


def test_yaml_file_base64_and_raw_in_papermills_order(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", PRINT_ALL, parameters="v_a = 0\nv_b = 0\nv_c = 0")
    (source.parent / "params.yaml").write_text(
        "v_a: from-file\nv_b: [1, {k: 2}]\nv_d: 2026-01-01\n"
    )
    b64 = base64.b64encode(b"v_a: from-b64\nv_e: 3").decode()
    papermill, nbjobs = both(
        local,
        source,
        "nb.ipynb",
        "out.ipynb",
        *("-r", "v_c", "7", "-p", "v_c", "8", "-y", "v_b: from-yaml"),
        *("-f", "params.yaml", "-b", b64),
    )
    expected = same(papermill, nbjobs)
    assert "v_c '7'" in expected.cells[-1].outputs[0].text


def test_a_notebook_without_a_parameters_cell_gets_them_at_the_top(
    local: Local, tmp_path: Path
) -> None:
    source = notebook(tmp_path / "nb", "print(v_x * 2)")
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb", "-p", "v_x", "21")
    expected = same(papermill, nbjobs)
    assert expected.cells[1].outputs[0].text == "42\n"
    assert "parameters" in papermill.stderr and "no cell tagged 'parameters'" in nbjobs.stderr


def test_an_unknown_name_is_injected_with_a_warning(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "print(typo)", parameters="v_x = 1  # the number")
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb", "-p", "typo", "5")
    same(papermill, nbjobs)
    assert papermill.code == 0 and "unknown parameter: typo" in papermill.stderr
    assert "unknown parameter(s) 'typo'" in nbjobs.stderr and "declares: v_x" in nbjobs.stderr
    result = json.loads(Path(_result_path(nbjobs.stdout)).read_text())
    assert any("'typo'" in note for note in result["notes"])


def test_strict_parameters_refuse_what_papermill_would_inject(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "print(typo)", parameters="v_x = 1")
    done = run(
        [NBJOBS, "run"], local.env, source, "strict", "nb.ipynb", "out.ipynb", "--strict-parameters",
        "-p", "typo", "5",
    )  # fmt: skip
    assert done.code == 2 and done.output() is None
    assert done.stderr.strip().splitlines()[-1] == (
        "nbjobs: UnknownParameterError: unknown parameter(s) 'typo'; declared parameters: v_x."
    )


def test_a_name_that_carries_code_is_refused_before_any_kernel(
    local: Local, tmp_path: Path
) -> None:
    """Papermill writes ``name = value`` unchecked: this name would run its code."""
    source = notebook(tmp_path / "nb", "print('ran')", parameters="v_x = 1")
    evil = "v_x = 1; open('pwned', 'w').close()  #"
    papermill = run(
        [PAPERMILL], local.env, source, "papermill", "nb.ipynb", "o.ipynb", "-p", evil, "1"
    )
    assert (papermill.folder / "pwned").exists()  # what the check prevents
    done = run([NBJOBS, "run"], local.env, source, "nbjobs", "nb.ipynb", "o.ipynb", "-p", evil, "1")
    assert (
        done.code == 2 and not (done.folder / "pwned").exists() and done.output("o.ipynb") is None
    )
    assert "is not a valid parameter name" in done.stderr and "Traceback" not in done.stderr


def test_a_failing_notebook_gets_papermills_banners_and_output(
    local: Local, tmp_path: Path
) -> None:
    source = notebook(
        tmp_path / "nb", "print('before')", "raise ValueError('bad')", "print('never')",
        parameters="v_x = 1",
    )  # fmt: skip
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb")
    expected = same(papermill, nbjobs)
    assert papermill.code != 0 and [c for c in seen(expected) if c[0] == "banner"]


def test_stale_banners_of_an_earlier_run_are_replaced(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "assert v_ok, 'not ok'", parameters="v_ok = False")
    first = run([PAPERMILL], local.env, source, "first", "nb.ipynb", "failed.ipynb")
    assert first.code != 0
    shutil.copy(first.folder / "failed.ipynb", source)  # the failed output is the new input
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb", "-p", "v_ok", "True")
    expected = same(papermill, nbjobs)
    assert papermill.code == 0 and not [c for c in seen(expected) if c[0] == "banner"]


def test_sys_exit_zero_stops_and_succeeds_and_nonzero_fails(local: Local, tmp_path: Path) -> None:
    for code in ("0", "3"):
        folder = tmp_path / f"exit{code}"
        source = notebook(
            folder, "print('a')", "import sys\nsys.exit(v_code)", "print('b')",
            parameters="v_code = 0",
        )  # fmt: skip
        papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb", "-p", "v_code", code)
        same(papermill, nbjobs)
        assert (papermill.code == 0) == (code == "0")


def test_a_timed_out_cell_gets_papermills_error_output(local: Local, tmp_path: Path) -> None:
    source = notebook(
        tmp_path / "nb", "print('started')", "import time\ntime.sleep(60)", "print('after')"
    )
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb", "--execution-timeout", "2")
    expected = same(papermill, nbjobs)
    assert papermill.code != 0
    assert seen(expected)[1][1] == [("error", "KeyboardInterrupt", "")]


def test_a_notebook_reads_the_files_beside_it(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "print(open('data.csv').read())")
    (source.parent / "data.csv").write_text("a,b\n1,2\n")
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb")
    assert same(papermill, nbjobs).cells[0].outputs[0].text == "a,b\n1,2\n\n"
    # a deliberate difference: from another folder too, as Jupyter runs it (papermill
    # would look for data.csv in the shell's folder, and fail)
    elsewhere = subprocess.run(
        [NBJOBS, "run", str(nbjobs.folder / "nb.ipynb"), "o.ipynb"],
        cwd=tmp_path,
        env=local.env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert (tmp_path / "o.ipynb").exists()


def test_cwd_runs_the_kernel_in_that_folder(local: Local, tmp_path: Path) -> None:
    source = notebook(
        tmp_path / "nb", "print(open('here.txt').read())\nopen('made.txt', 'w').write('x')"
    )
    (source.parent / "data").mkdir()
    (source.parent / "data" / "here.txt").write_text("in data")
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb", "--cwd", "data")
    assert same(papermill, nbjobs).cells[0].outputs[0].text == "in data\n"
    assert (nbjobs.folder / "data" / "made.txt").exists()
    # and the file it wrote there is stored with the run, too
    result = json.loads(Path(_result_path(nbjobs.stdout)).read_text())
    assert list(result["artefacts"]["files"]) == ["made.txt"]


def test_old_nbformat_and_kernel_python_give_a_valid_notebook(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "print(v_x)", parameters="v_x = 1")
    nb = json.loads(source.read_text())
    nb["nbformat_minor"] = 4
    nb["metadata"]["kernelspec"]["name"] = "python"
    for cell in nb["cells"]:
        cell.pop("id", None)
    source.write_text(json.dumps(nb))
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb", "-p", "v_x", "2")
    same(papermill, nbjobs)  # validates nbjobs' OUTPUT
    assert nbjobs.code == 0 and nbjobs.output().nbformat_minor == 5


def test_report_mode_hides_the_code(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "print(v_x)", parameters="v_x = 1")
    papermill, nbjobs = both(
        local, source, "nb.ipynb", "out.ipynb", "--report-mode", "-p", "v_x", "2"
    )
    expected = same(papermill, nbjobs)
    hidden = [c.metadata.get("jupyter", {}).get("source_hidden") for c in nbjobs.output().cells]
    assert hidden == [c.metadata.get("jupyter", {}).get("source_hidden") for c in expected.cells]
    assert hidden == [True, True, True]


def test_prepare_only_writes_the_parameterised_notebook(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "open('ran', 'w')", parameters="v_x = 1")
    papermill, nbjobs = both(
        local, source, "nb.ipynb", "out.ipynb", "--prepare-only", "-p", "v_x", "2"
    )
    same(papermill, nbjobs)
    assert nbjobs.code == 0 and not (nbjobs.folder / "ran").exists()
    assert nbjobs.output().cells[1].source == "# Parameters\nv_x = 2\n"


def test_output_to_stdout_and_a_path_with_placeholders(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "print(v_x)", parameters="v_x = 1")
    papermill, nbjobs = both(local, source, "nb.ipynb", "-", "-p", "v_x", "3")
    assert papermill.code == nbjobs.code == 0
    assert seen(nbformat.reads(nbjobs.stdout, 4)) == seen(nbformat.reads(papermill.stdout, 4))
    papermill, nbjobs = both(local, source, "nb.ipynb", "out_{v_x}.ipynb", "-p", "v_x", "3")
    same(papermill, nbjobs, "out_3.ipynb")


def test_stdout_and_stderr_files(local: Local, tmp_path: Path) -> None:
    source = notebook(
        tmp_path / "nb",
        "print('one')",
        "import sys\nprint('warn', file=sys.stderr)",
        "print('two')",
    )
    args = ("nb.ipynb", "out.ipynb", "--stdout-file", "o.txt", "--stderr-file", "e.txt")
    papermill, nbjobs = both(local, source, *args)
    same(papermill, nbjobs)
    for name in ("o.txt", "e.txt"):
        assert (nbjobs.folder / name).read_text() == (papermill.folder / name).read_text()
    assert (nbjobs.folder / "o.txt").read_text() == "one\ntwo\n"


def test_inject_paths(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "print(PAPERMILL_INPUT_PATH, PAPERMILL_OUTPUT_PATH)")
    papermill, nbjobs = both(local, source, "nb.ipynb", "out.ipynb", "--inject-paths")
    assert same(papermill, nbjobs).cells[1].outputs[0].text == "nb.ipynb out.ipynb\n"


def test_every_other_option_is_accepted(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "print(v_x)", parameters="v_x = 1")
    args = (
        "nb.ipynb", "out.ipynb", "-p", "v_x", "2", "-k", "python3", "-l", "python",
        "--start-timeout", "30", "--no-progress-bar", "--log-output", "--log-level", "WARNING",
        "--no-request-save-on-cell-execute", "--autosave-cell-every", "5", "--engine", "nbclient",
        "--prepare-execute", "--no-report-mode", "--inject-input-path", "--inject-output-path",
    )  # fmt: skip
    papermill, nbjobs = both(local, source, *args)
    same(papermill, nbjobs)
    assert nbjobs.code == 0


def test_language_writes_the_parameters_in_that_language(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "pass", parameters="v_b = False")
    args = ("nb.ipynb", "out.ipynb", "--prepare-only", "-l", "R", "-p", "v_b", "True")
    papermill, nbjobs = both(local, source, *args, "-p", "v_s", "a")
    expected = same(papermill, nbjobs)
    assert expected.cells[1].source == '# Parameters\nv_b = TRUE\nv_s = "a"\n'


def test_log_output_log_level_and_engine(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "print('hello from the cell')", parameters="v_x = 1")
    shown = run(
        [NBJOBS, "run"], local.env, source, "log", "nb.ipynb", "--log-output", "-p", "zz", "1"
    )
    assert shown.code == 0 and "hello from the cell" in shown.stderr
    assert "nbjobs: note: unknown parameter(s) 'zz'" in shown.stderr
    quiet = run(
        [NBJOBS, "run"],
        local.env,
        source,
        "quiet",
        "nb.ipynb",
        "--log-level",
        "error",
        "-p",
        "zz",
        "1",
    )
    assert quiet.code == 0 and "hello from the cell" not in quiet.stderr
    assert "note:" not in quiet.stderr
    engine = run([NBJOBS, "run"], local.env, source, "engine", "nb.ipynb", "--engine", "other")
    assert engine.code == 2 and "invalid choice: 'other'" in engine.stderr


def test_help_notebook_and_version(local: Local, tmp_path: Path) -> None:
    source = notebook(tmp_path / "nb", "pass", parameters="v_x = 1  # the number\nv_s = 'a'")
    papermill, nbjobs = both(local, source, "nb.ipynb", "--help-notebook")
    assert papermill.code == nbjobs.code == 0
    for name in ("v_x", "v_s", "the number"):
        assert name in papermill.stdout and name in nbjobs.stdout
    done = subprocess.run([NBJOBS, "run", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("nbjobs ")


def test_output_to_s3(local: Local, tmp_path: Path, bucket: str, s3: Any) -> None:
    source = notebook(tmp_path / "nb", "print(v_x)", parameters="v_x = 1")
    env = {**local.env, "AWS_ENDPOINT_URL_S3": os.environ["AWS_ENDPOINT_URL_S3"]}
    runs = {}
    for tool, tag in (([PAPERMILL], "papermill"), ([NBJOBS, "run"], "nbjobs")):
        target = f"s3://{bucket}/{tag}/out.ipynb"
        runs[tag] = run(tool, env, source, tag, "nb.ipynb", target, "-p", "v_x", "4")
        assert runs[tag].code == 0, runs[tag].stderr
    written = {
        tag: nbformat.reads(s3.get_object(Bucket=bucket, Key=f"{tag}/out.ipynb")["Body"].read(), 4)
        for tag in runs
    }
    assert seen(written["nbjobs"]) == seen(written["papermill"])


def test_nan_is_one_clear_line_where_papermill_injects_a_float(
    local: Local, tmp_path: Path
) -> None:
    """A deliberate difference: NaN cannot travel in the run's JSON parameters."""
    source = notebook(tmp_path / "nb", "print(v_x)", parameters="v_x = 1.0")
    done = run(
        [NBJOBS, "run"], local.env, source, "nbjobs", "nb.ipynb", "o.ipynb", "-p", "v_x", "nan"
    )
    assert done.code == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "-r v_x nan passes the string" in done.stderr


def test_two_concurrent_runs_of_one_notebook_share_its_folder(local: Local, tmp_path: Path) -> None:
    """As two Jupyter kernels in one folder do: each sees the other's files (the README
    says so), and each run stores the files that changed while it ran."""
    source = notebook(
        tmp_path / "nb",
        "open(f'{v_me}.txt', 'w').write(v_me)",
        "import pathlib, time\nother = pathlib.Path(f'{v_other}.txt')\n"
        "for _ in range(600):\n    if other.exists(): break\n    time.sleep(0.1)\n"
        "print(other.read_text())",
        parameters="v_me = 'a'\nv_other = 'b'",
    )
    runs = [
        subprocess.Popen(
            [NBJOBS, "run", str(source), "-p", "v_me", me, "-p", "v_other", other, "--json"],
            env=local.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    results = [json.loads(r.communicate(timeout=RUN_TIMEOUT_SECONDS)[0]) for r in runs]
    for result, me, other in zip(results, "ab", "ba", strict=True):
        assert result["status"] == "completed"
        executed = nbformat.read(result["artefacts"]["notebook"], as_version=4)
        assert executed.cells[-1].outputs[0].text == f"{other}\n"  # read the other's file
        assert f"{me}.txt" in result["artefacts"]["files"]
    assert sorted(p.name for p in source.parent.glob("*.txt")) == ["a.txt", "b.txt"]


def _result_path(summary: str) -> str:
    for line in summary.splitlines():
        if line.strip().startswith("result "):
            return line.split()[-1]
    raise AssertionError(f"no result line in:\n{summary}")


@pytest.fixture(scope="session")
def other_kernels() -> str:
    """The bash and R kernels (tests/services/kernels.sh)."""
    return service("kernels.sh", "the bash and R kernels")


@pytest.mark.usefixtures("other_kernels")
@pytest.mark.parametrize("kernel", sorted(NOTEBOOKS))
def test_other_languages_run_in_the_local_worker_as_under_papermill(
    local: Local, tmp_path: Path, kernel: str
) -> None:
    """A bash or R notebook with parameters, through the local server's worker (which
    keeps Python kernels started ahead): the same injected cell and outputs as
    papermill's, and the caller's environment in the kernel, as papermill gives it."""
    folder = tmp_path / kernel
    folder.mkdir()
    source = folder / "nb.ipynb"
    shutil.copy(NOTEBOOKS[kernel], source)
    args = [item for name, value in PARAMETERS.items() for item in ("-p", name, str(value))]
    env = {**local.env, "FROM_CALLER": "set by the caller"}
    papermill = run([PAPERMILL], env, source, "papermill", "nb.ipynb", "out.ipynb", *args)
    nbjobs = run([NBJOBS, "run"], env, source, "nbjobs", "nb.ipynb", "out.ipynb", *args)
    expected = same(papermill, nbjobs)
    assert papermill.code == nbjobs.code == 0, nbjobs.stderr
    assert "FROM_CALLER=set by the caller" in json.dumps(seen(expected))
    # written in the notebook's folder, as papermill's kernel writes it
    written = (nbjobs.folder / "written.txt").read_bytes()
    assert written == (papermill.folder / "written.txt").read_bytes() and b"Arc" in written
    assert f"(kernel {kernel})" in nbjobs.stdout
