"""Writes the test notebooks in tests/data and the example in examples/.

Run from the repository root after changing a notebook here:
``.venv/bin/python tests/data/make_notebooks.py``.
"""

import nbformat as nbf
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

KS = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
}
GLUE = '''from IPython.display import display


def glue(name, value):
    """Report a value to notebook-jobs (the same output as scrapbook.glue)."""
    display(
        {"application/scrapbook.scrap.json+json": {"name": name, "data": value, "encoder": "json", "version": 1}},
        metadata={"scrapbook": {"name": name, "data": True, "display": False}},
        raw=True,
    )'''


def nb(cells, path, **meta):
    n = new_notebook(cells=cells, metadata={**KS, **meta})
    for i, c in enumerate(n.cells):
        c["id"] = f"cell-{i}"
    nbf.write(n, path)


def params(src):
    c = new_code_cell(src)
    c.metadata["tags"] = ["parameters"]
    return c


def tagged(src, *tags):
    c = new_code_cell(src)
    c.metadata["tags"] = list(tags)
    return c


nb(
    [
        new_markdown_cell(
            "# Squares report\nA parameterised example: `n` numbers, squared, summed, saved as CSV."
        ),
        params(
            'n = 10  # how many numbers to square\nlabel = "squares"  # title printed above the table'
        ),
        new_code_cell(GLUE),
        new_code_cell(
            'import csv\n\nrows = [(i, i * i) for i in range(1, n + 1)]\nwith open(f"{label}.csv", "w", newline="") as f:\n    csv.writer(f).writerows([("i", "square"), *rows])\nprint(f"{label}: wrote {len(rows)} rows to {label}.csv")'
        ),
        new_code_cell(
            'total = sum(square for _, square in rows)\nglue("total", total)\nglue("label", label)\ntotal'
        ),
    ],
    "examples/report.ipynb",
)

nb(
    [
        params(
            'x = 1  # a number\nname = "world"  # who to greet\nratio = 0.5\nflag = False\nitems = [1, 2]\nconfig = {"a": 1}\nnothing = None'
        ),
        new_code_cell(GLUE),
        new_code_cell(
            'glue("echo", {"x": x, "name": name, "ratio": ratio, "flag": flag, "items": items, "config": config, "nothing": nothing})\nprint("hello", name)'
        ),
        tagged('glue("tagged_ran", True)', "extra"),
        new_code_cell('import os\nglue("cwd", os.getcwd())'),
    ],
    "tests/data/params.ipynb",
)

nb(
    [
        params("fail_at = 3"),
        new_code_cell('print("cell 1 ran")'),
        new_code_cell('value = 42\nprint("cell 2 ran")'),
        new_code_cell('raise ValueError(f"bad value {value}")'),
        new_code_cell('print("never")'),
    ],
    "tests/data/raises.ipynb",
)

nb(
    [
        params("seconds = 0.1  # how long the second cell sleeps"),
        new_code_cell('print("started", flush=True)'),
        new_code_cell('import time\ntime.sleep(seconds)\nprint("slept")'),
        new_code_cell('print("after")'),
    ],
    "tests/data/sleeps.ipynb",
)

nb(
    [
        params('path = "input.txt"  # a file the notebook reads, beside it'),
        new_code_cell("import random\n\nseed = random.random()  # state a repair must keep\nprint(seed)"),
        new_code_cell(GLUE),
        new_code_cell("with open(path) as f:\n    text = f.read()"),
        new_code_cell('glue("seed", seed)\nglue("text", text)'),
    ],
    "tests/data/needs_file.ipynb",
)

nb(
    [
        params("step_mib = 100  # what each growing cell adds\npause = 0.5  # seconds it then holds"),
        new_code_cell(
            "import time\n\nheld = []\n\n\ndef grow():\n"
            "    held.append(b\"x\" * (step_mib * 1024 * 1024))  # written: resident\n"
            "    time.sleep(pause)"
        ),
        *[new_code_cell("grow()") for _ in range(5)],
        new_code_cell('print("held", len(held) * step_mib, "MiB")'),
    ],
    "tests/data/grows.ipynb",
)

nb(
    [
        params("code = 0  # the exit code"),
        new_code_cell('print("before exit")'),
        new_code_cell("import sys\nsys.exit(code)"),
        new_code_cell('print("after exit")'),
    ],
    "tests/data/exits.ipynb",
)

nb(
    [
        new_code_cell(
            'import os\nos.makedirs("plots", exist_ok=True)\nopen("plots/a.txt", "w").write("A")\nopen("summary.txt", "w").write("done")'
        ),
    ],
    "tests/data/writes.ipynb",
)

nb(
    [
        new_markdown_cell("No parameters cell here."),
        new_code_cell('print("hi")'),
    ],
    "tests/data/no_params.ipynb",
)

nb([new_code_cell('1 + 1')], "tests/data/trivial.ipynb")

nb([params('path = "data.csv"  # an input file staged into the working folder'),
    new_code_cell(GLUE),
    new_code_cell('import os, socket\nwith open(path) as f:\n    glue("content", f.read())\nglue("job_id", os.environ.get("SLURM_JOB_ID"))\nglue("host", socket.gethostname())'),
   ], "tests/data/reads_input.ipynb")

# --- the hostile corpus (tests/flows/test_hostile.py) ---
import os as _os
_os.makedirs("tests/data/hostile", exist_ok=True)
H = "tests/data/hostile/"
nb([new_code_cell('print("warming up")'), new_code_cell('while True:\n    pass')], H + "loops_forever.ipynb")
nb([new_code_cell('print("about to die")'), new_code_cell('import os\nos._exit(1)'), new_code_cell('print("never")')], H + "os_exit.ipynb")
nb([new_code_cell('print("about to crash")'), new_code_cell('import ctypes\nctypes.string_at(0)'), new_code_cell('print("never")')], H + "segfault.ipynb")
nb([new_code_cell('for _ in range(200):\n    print("x" * 1_000_000)'), new_code_cell('print("after the flood")')], H + "huge_output.ipynb")
nb([new_code_cell('import os, sys, time\nos.write(1, b"bytes: \\xff\\xfe\\xfd end\\n")\nsys.stdout.buffer.write(b"buffer: \\xff\\xfe end\\n") if hasattr(sys.stdout, "buffer") else None\ntime.sleep(0.5)  # fd output is forwarded by a watcher thread'), new_code_cell('print("still fine")')], H + "non_utf8.ipynb")
nb([], H + "no_cells.ipynb")
nb([params('marker = "attempts.txt"  # a file that counts attempts'),
    new_code_cell('import os\nfirst = not os.path.exists(marker)\nwith open(marker, "a") as f:\n    f.write("attempt\\n")\nif first:\n    os._exit(1)  # the kernel dies on the first attempt only'),
    new_code_cell('print(open(marker).read().count("attempt"), "attempts")')], H + "dies_once.ipynb")
nb([params('marker = "runs.txt"  # a file that counts runs'),
    new_code_cell('with open(marker, "a") as f:\n    f.write("run\\n")\nraise RuntimeError("always")')], H + "raises_and_counts.ipynb")
nb([params('code = "nothing"  # a string parameter'), new_code_cell(GLUE), new_code_cell('glue("code", code)')], H + "echo_string.ipynb")
nb([new_code_cell('import os\nos.makedirs("sub", exist_ok=True)\nfor name in ["..evil.txt", "sub/we ird$name?.txt", "-rf", "ünï cødé.txt"]:\n    open(name, "w").write(name)')], H + "odd_file_names.ipynb")
v3 = nbf.v3.new_notebook(worksheets=[nbf.v3.new_worksheet(cells=[nbf.v3.new_code_cell(input='print("from nbformat 3")')])])
v3.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
with open(H + "nbformat_v3.ipynb", "w") as f:
    f.write(nbf.writes(v3, version=3))
with open("tests/data/params.ipynb") as f:
    text = f.read()
with open(H + "truncated.ipynb", "w") as f:
    f.write(text[: len(text) // 2])
nb([new_code_cell('import os\nfor key, value in sorted(os.environ.items()):\n    print(key, "=", value)')], H + "dumps_env.ipynb")
nb([params('leak = False  # set True to leave state behind'),
    new_code_cell(GLUE),
    new_code_cell('import os\nglue("pid", os.getpid())\nglue("saw_leftover", "LEFTOVER" in globals())\nglue("cwd", os.getcwd())\nif leak:\n    LEFTOVER = 1')], H + "kernel_identity.ipynb")

# the benchmark's notebook: three small cells, as in the measurements the issue quotes
nb([params('run = 0  # which run of a batch'), new_code_cell('x = sum(range(1000))'), new_code_cell('print(x)')], "benchmarks/three_cells.ipynb")

# rich outputs: a matplotlib figure, a DataFrame, data as JSON (stored one file each)
nb([new_markdown_cell("# Rich outputs"),
    params('points = 5  # how many points to plot'),
    new_code_cell('import matplotlib\nmatplotlib.use("module://matplotlib_inline.backend_inline")\nimport matplotlib.pyplot as plt\n\nfig, ax = plt.subplots(figsize=(3, 2))\nax.plot(range(points), [i * i for i in range(points)])\nplt.show()'),
    new_code_cell('import pandas as pd\n\npd.DataFrame({"i": range(points), "square": [i * i for i in range(points)]})'),
    new_code_cell('from IPython.display import JSON, display\n\ndisplay(JSON({"points": points, "squares": [i * i for i in range(points)]}))')],
   "tests/data/displays.ipynb")

nb([params('password = ""  # secret: the warehouse password\nuser = "analyst"  # who connects\nfail = False  # raise at the end, with the password in the message'),
    new_code_cell(GLUE),
    new_code_cell('import json, sys\nprint("connecting as", user, "with", password)\nprint(repr(password))\nprint(json.dumps({"password": password}))\nprint(password, file=sys.stderr)'),
    new_code_cell('from IPython.display import HTML, display\ndisplay(HTML(f"<b>{password}</b>"))\nglue("password", password)\nglue("length", len(password))\nwith open("credentials.txt", "w") as f:\n    f.write(f"{user}:{password}\\n")\n{"password": password}'),
    new_code_cell('if fail:\n    raise ValueError(f"the warehouse refused {password!r}")'),
   ], "tests/data/secret.ipynb")

# counts its executions in a file outside its run folder: a cached run adds no line
nb([params('marker = "runs.txt"  # a file that counts executions\nn = 1  # a number\nfail = False  # raise at the end'),
    new_code_cell(GLUE),
    new_code_cell('with open(marker, "a") as f:\n    f.write("ran\\n")\nglue("n", n)'),
    new_code_cell('if fail:\n    raise ValueError("asked to fail")'),
   ], "tests/data/counts.ipynb")

# the cache benchmark's notebook: an analysis that computes for `seconds`
nb([params('seconds = 5.0  # how long the analysis computes'),
    new_code_cell('import time\n\nstart, rounds = time.perf_counter(), 0\nwhile time.perf_counter() - start < seconds:\n    total = sum(i * i for i in range(10_000))\n    rounds += 1\nprint(f"{rounds} rounds in {seconds} s")'),
   ], "benchmarks/analysis.ipynb")

# the secret example of docs/secrets-cache-alerts.md: the password comes from a Secret block, never a parameter
nb([new_markdown_cell("# Warehouse report\nConnects with a password from the Prefect Secret block `warehouse-password`."),
    params('password = ""  # secret: warehouse-password\nuser = "analyst"  # who connects'),
    new_code_cell(GLUE),
    new_code_cell('print(f"connecting as {user} with password {password}")  # shown masked\nglue("password_length", len(password))\nglue("user", user)'),
   ], "examples/warehouse.ipynb")

# other languages' kernels (tests/oracle.py: papermill is the oracle for each)
nb([params('name="world"\ncount=1\nratio=0.5\nflag=false'),
    new_code_cell('echo "hello $name, count $count, ratio $ratio, flag $flag"'),
    new_code_cell('for i in $(seq 1 "$count"); do echo "line $i"; done\necho "to stderr" >&2'),
    new_code_cell('echo "$name" > written.txt && ls written.txt\necho "FROM_CALLER=${FROM_CALLER:-unset}"'),
   ], "tests/data/bash.ipynb",
   kernelspec={"name": "bash", "display_name": "Bash", "language": "bash"},
   language_info={"name": "bash"})
nb([params('name <- "world"\ncount <- 1\nratio <- 0.5\nflag <- FALSE\nitems <- list()'),
    new_code_cell('cat("hello", name, "count", count, "ratio", ratio, "flag", flag, "\\n")'),
    new_code_cell('print(unlist(items))\nprint(seq_len(count) * ratio)\nmessage("to stderr")'),
    new_code_cell('writeLines(name, "written.txt")\nprint(file.exists("written.txt"))\ncat("FROM_CALLER=", Sys.getenv("FROM_CALLER", "unset"), "\\n", sep = "")'),
   ], "tests/data/r.ipynb",
   kernelspec={"name": "ir", "display_name": "R", "language": "R"},
   language_info={"name": "R"})

# a scheduled series: the run's context filled in (tasks/engine/run_context.py)
nb([params('report_date = None  # nbjobs: logical_date\n'
           'due = None  # nbjobs: scheduled_time\n'
           'trigger = None  # nbjobs: trigger\n'
           'attempt = None  # nbjobs: attempt\n'
           'run_id = None  # nbjobs: run_id\n'
           'deployment = None  # nbjobs: deployment\n'
           'run_url = None  # nbjobs: run_url\n'
           'seconds = 0.0  # how long the run takes\n'
           'fail_on = ""  # a date whose run fails ("any": every run), unless the file `fixed` exists\n'
           'fixed = ""  # the file that makes the run of `fail_on` pass'),
    new_code_cell(GLUE),
    new_code_cell('import os\nimport time\n\nprint(f"scheduled for {due}")\n'
                  'for name in ("report_date", "due", "trigger", "attempt", "run_id", "deployment", "run_url"):\n'
                  '    glue(name, globals()[name])\n'
                  'time.sleep(seconds)'),
    new_code_cell('if fail_on in (report_date, "any") and not (fixed and os.path.exists(fixed)):\n'
                  '    raise ValueError(f"no data for {report_date}")'),
   ], "tests/data/series.ipynb")

# the README's schedule (its tour): a report for the day each run is for
nb([new_markdown_cell("# Daily report\nThe orders of one day: the day the run is for (its logical date)."),
    params('report_date = None  # nbjobs: logical_date\nregion = "eu"  # which region'),
    new_code_cell(GLUE),
    new_code_cell('import datetime\nimport random\n\nday = datetime.date.fromisoformat(report_date)\n'
                  'orders = random.Random(f"{region}{day}").randint(500, 900)  # stands in for a query\n'
                  'print(f"{region} orders on {day:%a %d %b %Y}: {orders}")\nglue("orders", orders)'),
   ], "examples/daily.ipynb")
