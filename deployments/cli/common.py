"""What the command modules share: the local server when none is configured, the
command line's parameters, the version."""

from __future__ import annotations

import argparse
import math
import os
from typing import TYPE_CHECKING, Any

from notebook_jobs.blocks.exceptions import OptionError

if TYPE_CHECKING:
    from notebook_jobs.deployments.local_server import LocalServer


def use_local_server() -> LocalServer | None:
    """The local server, started if need be, when no Prefect server is configured; else None.

    Sets ``PREFECT_API_URL`` for this process (before Prefect is imported) so that
    Prefect's own client talks to it.
    """
    from notebook_jobs.deployments.local_server import LocalServer
    from notebook_jobs.deployments.local_state import configured_api_url

    if configured_api_url() is not None:
        return None
    server = LocalServer()
    from notebook_jobs.deployments.light_commands import announce

    os.environ["PREFECT_API_URL"] = server.ensure(announce=announce)
    auth_string = server.auth_string()
    if auth_string:
        os.environ["PREFECT_API_AUTH_STRING"] = auth_string
    return server


def add_parameter_options(parser: argparse.ArgumentParser, p_help: str, r_help: str) -> None:
    """Papermill's parameter options, with papermill's names (``deployments/papermill_args.py``)."""
    for flags, text in (
        (("-p", "--parameters", "--parameter"), p_help),
        (("-r", "--parameters_raw", "--raw"), r_help),
    ):
        parser.add_argument(
            *flags,
            dest=flags[1].removeprefix("--"),
            nargs=2,
            action="append",
            default=[],
            metavar=("NAME", "VALUE"),
            help=text,
        )
    parser.add_argument(
        "-s",
        "--secret",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "BLOCK"),
        help="a secret parameter: the value of this Prefect Secret block, loaded by the "
        "run and masked in everything it stores and shows",
    )
    yaml_options: tuple[tuple[tuple[str, str], str], ...] = (
        (("-y", "--parameters_yaml"), "parameters as a YAML mapping"),
        (("-f", "--parameters_file"), "a YAML file of parameters"),
        (("-b", "--parameters_base64"), "parameters as base64-encoded YAML"),
    )
    for yaml_flags, yaml_help in yaml_options:
        parser.add_argument(
            *yaml_flags, action="append", default=[], metavar="YAML", help=yaml_help
        )


def request_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's parameters, as papermill reads them.

    Raises:
        OptionError: A -y/-f/-b value cannot be read, or a value cannot travel as JSON.
    """
    from notebook_jobs.deployments.papermill_args import read_parameters

    parameters = read_parameters(
        p=args.parameters,
        r=args.parameters_raw,
        y=args.parameters_yaml,
        f=args.parameters_file,
        b=args.parameters_base64,
    )
    for name, block in args.secret:
        parameters[name] = {"$secret": block}  # tasks/engine/secrets.py: a reference
    for name, value in parameters.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(
                f"parameter {name!r} is {value}: papermill would inject float({str(value)!r}), "
                "but NaN and infinity cannot travel as JSON to the run yet; "
                f"-r {name} {value} passes the string"
            )
    return parameters


def memory_size(text: str) -> str:
    """An argparse ``type``: a memory size as written (``2GiB``), checked, kept as text.

    Raises:
        argparse.ArgumentTypeError: Not a size; the message shows what one looks like.
    """
    from notebook_jobs.blocks.sizes import parse_size

    try:
        parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def duration(text: str) -> float:
    """An argparse ``type``: ``10m``, ``30s``, ``2h`` (or ``0``) in seconds.

    Raises:
        argparse.ArgumentTypeError: Not a duration; the message shows how to write one.
    """
    if text.strip() == "0":
        return 0.0
    from notebook_jobs.tasks.engine.run_context import duration_seconds

    try:
        return duration_seconds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def duration_text(text: str) -> str:
    """An argparse ``type``: a duration (``10m``, ``0``), checked, kept as text."""
    duration(text)
    return text


MEMORY_LIMIT_HELP = (
    "memory the kernel and what it starts may use, e.g. 2GiB or 300MiB: the cell that "
    "reaches it is interrupted and the run fails with MemoryLimitError"
)


def version() -> str:
    """``nbjobs X.Y.Z``, from the installed distribution."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return f"nbjobs {installed('notebook-jobs')}"
    except PackageNotFoundError:
        return "nbjobs (not installed)"
