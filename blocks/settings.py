"""Every ``NBJOBS_*`` setting, read and checked in one place.

``settings()`` reads the environment into one typed, frozen ``Settings``. A bad value
is refused with a ``SettingsError`` that names the variable and what it takes, the
same way wherever it is read.

Standard library only, on purpose: the command line reads these before it decides
whether Prefect is needed at all. pydantic-settings (what Prefect uses) costs 0.3 s
to import, measured here, against 0.14 s for the whole ``nbjobs run`` client; what it
would give (typed fields, one error per bad value) is the few lines below.

The environment is read on every call, not cached: it is a few dictionary lookups,
and tests and ``nbjobs serve`` change it within one process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from notebook_jobs.blocks.exceptions import SettingsError

PREFIX = "NBJOBS_"
HOME_ENV = "NBJOBS_HOME"
DEFAULT_STORE_ENV = "NBJOBS_STORE"
BLOCK_SPEC = re.compile(r"^(s3-bucket|local-file-system)/([a-z0-9][a-z0-9-]*)$")
BARE_BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError
    return value


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError


def _launcher(text: str) -> str:
    lowered = text.strip().lower()
    if lowered in ("fork", "spawn"):
        return lowered
    raise ValueError


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _setting(
    variable: str,
    parse: Callable[[str], Any],
    takes: str,
    default: Any,
    doc: str,
    shown: str | None = None,
) -> Any:
    """A setting's field: its variable, parser, what it takes, default, and its default
    as the docs show it (``shown``, for a default worked out when read)."""
    if shown is None:
        if isinstance(default, bool):
            shown = "1" if default else "0"
        else:
            shown = str(default) if default not in (None, ()) else "none"
    metadata = {"variable": variable, "parse": parse, "takes": takes, "doc": doc, "shown": shown}
    if callable(default):  # worked out when read (``~`` is the user's of that moment)
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """notebook-jobs' settings, from ``NBJOBS_*`` environment variables.

    Example:
        >>> settings(environ={"NBJOBS_KERNEL_POOL": "2"}).kernel_pool
        2
        >>> settings(environ={"NBJOBS_KERNEL_POOL": "two"})
        Traceback (most recent call last):
        SettingsError: NBJOBS_KERNEL_POOL='two' is not valid: it takes a whole number >= 0
    """

    home: Path = _setting(  # noqa: RUF009 (a Path is immutable)
        HOME_ENV,
        lambda text: Path(text).expanduser(),
        "a folder",
        lambda: Path("~/.nbjobs").expanduser(),
        "notebook-jobs' own folder: run folders, spilled uploads, the default store, "
        "the local server",
        shown="~/.nbjobs",
    )
    store: str | None = _setting(
        DEFAULT_STORE_ENV,
        str.strip,
        "a store (a folder, s3://bucket/prefix or a block name)",
        None,
        "the artefact store of runs that name none",
        shown="the folder $NBJOBS_HOME/artefacts",
    )
    kernel_pool: int = _setting(
        "NBJOBS_KERNEL_POOL",
        _count,
        "a whole number >= 0",
        2,
        "kernels kept started ahead of demand by `nbjobs serve` (0: none)",
    )
    kernel_launcher: Literal["fork", "spawn"] = _setting(
        "NBJOBS_KERNEL_LAUNCHER",
        _launcher,
        "fork or spawn",
        "fork",
        "how a worker starts ipykernels: forked from a warm fork server, or spawned",
    )
    kernel_preload: tuple[str, ...] = _setting(
        "NBJOBS_KERNEL_PRELOAD",
        _names,
        "module names separated by commas",
        (),
        "modules the fork server imports once, so forked kernels start with them",
    )
    kernel_retries: int = _setting(
        "NBJOBS_KERNEL_RETRIES", _count, "a whole number >= 0", 1, "retries of a dead kernel"
    )
    store_retries: int = _setting(
        "NBJOBS_STORE_RETRIES",
        _count,
        "a whole number >= 0",
        2,
        "retries of a failed upload before the run's artefacts are spilled",
    )
    keep_run_dirs: bool = _setting(
        "NBJOBS_KEEP_RUN_DIRS",
        _switch,
        "1 or 0",
        False,
        "keep each run's folder after its artefacts are stored",
    )
    zombie_seconds: float = _setting(
        "NBJOBS_ZOMBIE_SECONDS",
        _seconds,
        "a number of seconds > 0",
        90.0,
        "heartbeat silence after which a run is marked Crashed",
    )
    max_notebook_bytes: int = _setting(
        "NBJOBS_MAX_NOTEBOOK_BYTES",
        _count,
        "a whole number >= 0 (bytes)",
        50_000_000,
        "the largest notebook a run accepts, inline or fetched; larger ones are refused",
    )
    files_url: str | None = _setting(
        "NBJOBS_FILES_URL",
        lambda text: text.strip().rstrip("/"),
        "a URL",
        None,
        "a file server for local stores that links point at, for a process outside the "
        "worker's runtime (the worker passes its own to the runs it starts in subprocesses)",
    )
    server_start_timeout_seconds: float = _setting(
        "NBJOBS_SERVER_START_TIMEOUT",
        _seconds,
        "a number of seconds > 0",
        300.0,
        "how long the local Prefect server may take to start",
    )
    api_deadline_seconds: float = _setting(
        "NBJOBS_API_DEADLINE",
        _seconds,
        "a number of seconds > 0",
        120.0,
        "how long `nbjobs` asks a busy or unreachable Prefect API again (HTTP 503 or 429, "
        "no answer, refused) before it gives up on a request; a run it creates is never "
        "made twice",
    )


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings, read from ``environ`` (``os.environ`` by default).

    An unset or empty variable takes the default.

    Raises:
        SettingsError: A variable holds a value its setting cannot take.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in fields(Settings):
        variable = spec.metadata["variable"]
        text = environ.get(variable)
        if text is None or not text.strip():
            continue
        try:
            values[spec.name] = spec.metadata["parse"](text)
        except ValueError:
            raise SettingsError(
                f"{variable}={text!r} is not valid: it takes {spec.metadata['takes']}",
                variable=variable,
                value=text,
            ) from None
    return Settings(**values)


def described() -> list[tuple[str, str, str, str]]:
    """Each setting's variable, what it takes, its default and what it is for (the docs'
    settings page is generated from it)."""
    return [
        (
            spec.metadata["variable"],
            spec.metadata["takes"],
            spec.metadata["shown"],
            spec.metadata["doc"],
        )
        for spec in fields(Settings)
    ]


def nbjobs_home() -> Path:
    """notebook-jobs' own folder: ``$NBJOBS_HOME``, else ``~/.nbjobs``.

    It holds run folders (``runs/``), spilled uploads (``spill/``), the default
    artefact store (``artefacts/``) and the local Prefect server (``server/``).
    """
    return settings().home


def is_local_store(spec: str) -> bool:
    """Whether a store spec names a local folder (not ``s3://``, not a block name)."""
    spec = spec.strip()
    if spec.startswith("file://"):
        return True
    if "://" in spec:
        return False
    return not (BLOCK_SPEC.match(spec) or BARE_BLOCK_NAME.match(spec))


def absolute_store(spec: str) -> str:
    """A store spec that means the same from any working folder (``./runs`` made absolute).

    Example:
        >>> absolute_store("runs/")   # in /home/me
        '/home/me/runs'
    """
    spec = spec.strip()
    if not is_local_store(spec) or spec.startswith("file://"):
        return spec
    return str(Path(spec).expanduser().resolve())
