"""``nbjobs run INPUT [OUTPUT]`` takes papermill's command line, option for option.

A papermill user swaps the command name: ``papermill in.ipynb out.ipynb -p n 3
--cwd data -k python3`` and ``nbjobs run in.ipynb out.ipynb -p n 3 --cwd data -k
python3`` give the same OUTPUT and the same exit status (zero or not), plus a stored
run, a result and a page in the Prefect UI. This module holds what is papermill's
alone: its options, OUTPUT (a path, ``s3://``, or ``-`` for stdout; papermill's
``{name}`` placeholders filled from the parameters), ``--stdout-file`` and
``--stderr-file``, ``--prepare-only``, ``--help-notebook`` and the ``--inject-*``
parameters. Standard library only at import: ``nbjobs run`` stays a light client.

The deliberate differences are in docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from notebook_jobs.blocks.exceptions import OptionError

LOG_LEVELS = ("NOTSET", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENGINES = ("nbclient",)  # papermill's default engine, the one we run


def add_papermill_options(run: argparse.ArgumentParser) -> None:
    """The options of ``papermill --help`` (2.7) that the parser does not have yet.

    ``-p``, ``-r``, ``-y``, ``-f``, ``-b``, ``-k``, ``--execution-timeout`` and
    ``--log-output`` are declared beside the options of ours that mean the same.
    """
    run.add_argument(
        "output",
        nargs="?",
        metavar="OUTPUT",
        help="also write the executed notebook here: a path, s3://bucket/key, or - for "
        "stdout; {name} is filled from the parameters, as in papermill",
    )
    run.add_argument("-l", "--language", help="language the parameters are written in")
    run.add_argument(
        "--cwd",
        help="the kernel's working folder (default: the notebook's own folder, as in Jupyter)",
    )
    run.add_argument(
        "--start-timeout",
        "--start_timeout",
        dest="start_timeout",
        type=float,
        metavar="SECONDS",
        help="limit for the kernel to start (default 60)",
    )
    run.add_argument(
        "--report-mode",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="hide the source of every code cell",
    )
    run.add_argument(
        "--prepare-only",
        dest="prepare_only",
        action="store_true",
        default=False,
        help="write OUTPUT with the parameters injected, without running it",
    )
    run.add_argument(
        "--prepare-execute",
        dest="prepare_only",
        action="store_false",
        help="run the notebook (the default; undoes --prepare-only)",
    )
    run.add_argument("--stdout-file", metavar="FILE", help="write the notebook's stdout to FILE")
    run.add_argument("--stderr-file", metavar="FILE", help="write the notebook's stderr to FILE")
    run.add_argument(
        "--progress-bar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the cell progress bar on stderr (default: on a terminal)",
    )
    run.add_argument(
        "--no-log-output",
        dest="verbose",
        action="store_false",
        help="do not show the run's log (the default; undoes --log-output)",
    )
    run.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="WARNING or above hides the parameter warnings",
    )
    run.add_argument(
        "--request-save-on-cell-execute",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="accepted for papermill's scripts: OUTPUT is written once, when the run ends "
        "(the run's progress is live in the Prefect UI)",
    )
    run.add_argument(
        "--autosave-cell-every",
        type=int,
        default=30,
        metavar="SECONDS",
        help="accepted for papermill's scripts (see --request-save-on-cell-execute)",
    )
    for flag, text in (
        ("--inject-input-path", "pass INPUT as the parameter PAPERMILL_INPUT_PATH"),
        ("--inject-output-path", "pass OUTPUT as the parameter PAPERMILL_OUTPUT_PATH"),
        ("--inject-paths", "both of the above"),
    ):
        run.add_argument(flag, action="store_true", help=text)
    run.add_argument(
        "--engine", choices=ENGINES, help="papermill's execution engine: nbclient only"
    )
    run.add_argument(
        "--help-notebook", action="store_true", help="list the notebook's parameters and exit"
    )
    run.add_argument(
        "--strict-parameters",
        action="store_true",
        help="refuse parameters the notebook does not declare (papermill warns and injects)",
    )


def wants_progress_bar(args: argparse.Namespace) -> bool:
    """``--progress-bar`` or ``--no-progress-bar`` if given, else on a terminal only,
    and never beside ``--json``, ``--log-output`` or OUTPUT ``-``."""
    if args.progress_bar is not None:
        return bool(args.progress_bar)
    return not (args.json or args.verbose or args.output == "-") and sys.stderr.isatty()


def builtin_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The names papermill's path placeholders may use: the parameters and ``pm``."""
    now = datetime.now()
    return {
        **parameters,
        "pm": {
            "run_uuid": str(uuid.uuid4()),
            "current_datetime_local": now,
            "current_datetime_utc": datetime.now(timezone.utc),
        },
    }


def fill_path(path: str, parameters: dict[str, Any]) -> str:
    """Papermill's ``parameterize_path``: ``out_{n}.ipynb`` with ``-p n 3`` is ``out_3.ipynb``.

    Raises:
        OptionError: A placeholder names no parameter.
    """
    try:
        return path.format(**builtin_parameters(parameters))
    except KeyError as error:
        raise OptionError(f"OUTPUT {path!r} names {error} but no such parameter is given") from None
    except (IndexError, ValueError, AttributeError) as error:
        raise OptionError(f"OUTPUT {path!r}: {error}") from None


def prepare(args: argparse.Namespace, parameters: dict[str, Any]) -> dict[str, Any]:
    """Check papermill's options before any run starts and settle what they mean.

    Returns:
        The parameters, with papermill's ``PAPERMILL_*_PATH`` added when asked for.
        ``args.output`` is filled in (placeholders), and ``args.cwd`` is the notebook's
        folder when not given, for a local notebook run on this machine.

    Raises:
        OptionError: Options that contradict each other, or an OUTPUT that cannot be
            written (its folder does not exist).
    """
    paths: dict[str, Any] = {}  # first, as papermill injects them
    if args.inject_input_path or args.inject_paths:
        paths["PAPERMILL_INPUT_PATH"] = args.notebook
    if args.inject_output_path or args.inject_paths:
        paths["PAPERMILL_OUTPUT_PATH"] = args.output or "-"
    parameters = {**paths, **parameters}
    if args.output is not None:
        args.output = fill_path(args.output, parameters)
    if args.output == "-" and args.json:
        raise OptionError("OUTPUT - and --json both write to stdout: choose one")
    if args.prepare_only and args.output is None:
        raise OptionError("--prepare-only writes OUTPUT and runs nothing: give OUTPUT")
    for what, target in (
        ("OUTPUT", args.output),
        ("--stdout-file", args.stdout_file),
        ("--stderr-file", args.stderr_file),
    ):
        if target and target != "-" and not target.startswith("s3://"):
            folder = Path(target).expanduser().resolve().parent
            if not folder.is_dir():
                raise OptionError(f"{what} {target}: the folder {folder} does not exist")
    if args.cwd is not None:
        if args.cluster:
            raise OptionError(
                "--cwd is not available with --cluster: the job runs in its own folder on the "
                "cluster's shared filesystem; send the files it reads with --input-file"
            )
        folder = Path(args.cwd).expanduser()
        if not folder.is_dir():
            raise OptionError(f"--cwd {args.cwd}: not a folder")
        args.cwd = str(folder.resolve())
    elif not args.cluster and not args.prepare_only:
        found = default_cwd(args.notebook)
        args.cwd = str(found) if found else None
    refuse_local_plain_secrets(args.notebook, parameters)
    return parameters


def refuse_local_plain_secrets(notebook: str, parameters: dict[str, Any]) -> None:
    """Refuse a value for a name a local notebook declares ``# secret``, before any run
    exists to store it (the run checks again, for any notebook).

    Raises:
        SecretParameterError: One line that says to send a Secret block's name.
    """
    from notebook_jobs.tasks.engine.secrets import refuse_plain_secrets

    if not parameters or notebook == "-" or default_cwd(notebook) is None:
        return
    try:
        document = json.loads(Path(notebook).expanduser().read_bytes())
    except (OSError, ValueError):
        return  # not readable here, or not JSON: the run says what is wrong
    if isinstance(document, dict):
        refuse_plain_secrets(document, parameters)


def default_cwd(notebook: str) -> Path | None:
    """Where a notebook runs when no ``--cwd`` is given: a local notebook in its own
    folder (as Jupyter runs it), one read from stdin in the current folder (as
    papermill runs it), one from a URL or S3 in a fresh folder of the run's own."""
    if notebook == "-":
        return Path.cwd()
    if notebook.strip().startswith(("s3://", "http://", "https://", "{")):
        return None
    return Path(notebook).expanduser().resolve().parent


def stream_text(notebook: dict[str, Any], name: str) -> str:
    """All the text a notebook's code cells wrote to ``stdout`` or ``stderr``, in order."""
    return "".join(
        "".join(output["text"]) if isinstance(output.get("text"), list) else output["text"]
        for cell in notebook.get("cells", [])
        if cell.get("cell_type") == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream" and output.get("name") == name
    )


def write_target(target: str, data: bytes) -> None:
    """Write ``data`` to a local path, an ``s3://`` URI, or stdout (``-``)."""
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if target.startswith("s3://"):
        from notebook_jobs.blocks.s3 import write_s3_object  # boto3: only for an S3 OUTPUT

        write_s3_object(target, data)
        return
    Path(target).expanduser().write_bytes(data)


def deliver(args: argparse.Namespace, notebook: bytes | None) -> str | None:
    """Write OUTPUT, ``--stdout-file`` and ``--stderr-file`` from the stored notebook.

    Returns:
        Why one could not be written (one line), or ``None``.
    """
    if notebook is None:
        wanted = [t for t in (args.output, args.stdout_file, args.stderr_file) if t]
        return f"no notebook was stored, so {', '.join(wanted)} was not written" if wanted else None
    try:
        if args.output:
            write_target(args.output, notebook)
        if args.stdout_file or args.stderr_file:
            document = json.loads(notebook)
            for target, name in ((args.stdout_file, "stdout"), (args.stderr_file, "stderr")):
                if target:
                    write_target(target, stream_text(document, name).encode())
    except Exception as error:  # the run is stored: say what was not written, and why
        return (
            f"could not write {args.output or 'the stream files'}: {type(error).__name__}: {error}"
        )
    return None


def prepare_only(args: argparse.Namespace, parameters: dict[str, Any]) -> list[str]:
    """``--prepare-only``: OUTPUT is the notebook with its parameters injected, unrun.

    Returns:
        Papermill's warnings (unknown names, no ``parameters`` cell).

    Raises:
        NotebookInputError: The notebook, a parameter name or value is refused.
    """
    import nbformat

    from notebook_jobs.tasks.engine.fetch import fetch_notebook_source, parse_notebook
    from notebook_jobs.tasks.engine.secrets import MASK, refuse_plain_secrets, secret_reference
    from notebook_jobs.tasks.engine.staging import (
        check_parameters,
        inject_parameters,
        kernel_name_of,
    )

    notebook = sys.stdin.read() if args.notebook == "-" else args.notebook
    source = fetch_notebook_source(notebook)
    nb = parse_notebook(source)
    kernel = kernel_name_of(nb, args.kernel)
    refuse_plain_secrets(nb, parameters)
    parameters = {name: MASK if secret_reference(v) else v for name, v in parameters.items()}
    warnings = check_parameters(
        nb, parameters, kernel, language=args.language, strict=args.strict_parameters
    )
    prepared, _ = inject_parameters(
        nb, parameters, kernel, language=args.language, report_mode=args.report_mode
    )
    prepared.metadata.papermill.update(input_path=source.origin, output_path=args.output)
    write_target(args.output, nbformat.writes(prepared).encode())
    return warnings
