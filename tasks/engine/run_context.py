"""What a run is, for the notebook that asks: its logical date, trigger, attempt...

A parameter asks for a value of its run with a comment in the ``parameters`` cell::

    report_date = None  # nbjobs: logical_date
    due = None          # nbjobs: scheduled_time

and is filled in when the parameters are injected, unless the caller set it. The
values (``RUN_VALUES``) are those of ``tasks.models.RunContext``: a scheduled run's are
its tick's, in the schedule's time zone; a backfill's, the date it makes; a run started
by hand, the moment it was asked for. Pure and Prefect-free: the flow computes the
context, staging fills it in, and a Slurm job gets the injected notebook as is.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notebook_jobs.blocks.exceptions import ParameterValueError
from notebook_jobs.tasks.engine.parameters import parameters_cell_source, parse_parameters

RUN_VALUES = (
    "logical_date",  # the tick's date, YYYY-MM-DD, in the schedule's time zone
    "scheduled_time",  # the tick itself, ISO 8601 with its offset
    "trigger",  # schedule, backfill, api, ui, cli, batch
    "attempt",  # 1, then 2 for the first retry...
    "run_id",
    "deployment",  # run-notebook/NAME, or None
    "run_url",  # the run's page in the Prefect UI
)
_DECLARED = re.compile(r"^nbjobs\s*:\s*(?P<value>\S*)", re.I)


def run_value_asked(comment: str) -> str | None:
    """The run value a parameter's comment asks for (``nbjobs: logical_date``), checked
    or not; ``None`` for any other comment."""
    match = _DECLARED.match((comment or "").strip())
    return match.group("value") if match else None


def declared_run_values(nb: dict[str, Any]) -> dict[str, str]:
    """The parameters the ``parameters`` cell asks to be filled with a run value.

    Returns:
        Parameter name -> the run value it asks for (one of ``RUN_VALUES``).

    Raises:
        ParameterValueError: A ``# nbjobs:`` comment names no run value (a typo).

    Example:
        >>> declared_run_values(nb)  # report_date = None  # nbjobs: logical_date
        {'report_date': 'logical_date'}
    """
    found: dict[str, str] = {}
    for item in parse_parameters(parameters_cell_source(nb) or "") or []:
        value = run_value_asked(item.get("help") or "")
        if value is None:
            continue
        if value not in RUN_VALUES:
            raise ParameterValueError(
                item["name"],
                f"'# nbjobs: {value}' is not a value of the run; the parameters cell can ask "
                f"for one of {', '.join(RUN_VALUES)}",
            )
        found[item["name"]] = value
    return found


def logical_date(scheduled: datetime) -> str:
    """The date a run is for: its tick's calendar date where its schedule runs."""
    return scheduled.date().isoformat()


def zone_of(names: list[str | None]) -> tzinfo:
    """The first of a deployment's schedule time zones that exists; else this machine's
    (what a run is for is read in it)."""
    for name in names:
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                break
    return datetime.now().astimezone().tzinfo or timezone.utc


def zone_name(zone: tzinfo) -> str:
    """``Europe/Berlin``; a fixed offset's name (``UTC``) where it has no other."""
    return getattr(zone, "key", None) or str(zone)


def tick_text(when: datetime) -> str:
    """A tick as names and tables show it: the date alone at midnight, else with the time.

    Example:
        >>> tick_text(datetime(2026, 1, 5, 6, 0))
        '2026-01-05 06:00'
    """
    if (when.hour, when.minute, when.second) == (0, 0, 0):
        return when.date().isoformat()
    return when.strftime("%Y-%m-%d %H:%M:%S" if when.second else "%Y-%m-%d %H:%M")


SERIES_TRIGGERS = ("schedule", "backfill")  # runs that are for a tick, not for "now"


def run_values(
    nb: dict[str, Any], given: dict[str, Any], context: dict[str, Any] | None
) -> dict[str, Any]:
    """The run values to inject: each declared name the caller did not set.

    ``None`` is not set: it is what such a parameter's default is, and what a form
    that sends every default (the Prefect UI's) sends for it.

    Args:
        nb: The notebook.
        given: The parameters the run was sent (they win, unless ``None``).
        context: The run's context (``RunContext`` as JSON); ``None`` outside a run.

    Raises:
        ParameterValueError: A typo in a ``# nbjobs:`` comment.
    """
    declared = declared_run_values(nb)
    if not declared or context is None:
        return {}
    return {name: context.get(value) for name, value in declared.items() if given.get(name) is None}


_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>s|m|min|h|d|w)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> float:
    """``30s``, ``5m``, ``2h``, ``1d``, ``1w`` (or plain seconds) in seconds.

    Raises:
        ValueError: Not a positive duration; says how to write one.

    Example:
        >>> duration_seconds("1d")
        86400.0
    """
    match = _DURATION.match(text or "")
    seconds = (
        float(match.group("number")) * _UNIT_SECONDS[match.group("unit") or "s"] if match else 0
    )
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a duration; write it as 30s, 5m, 2h, 1d or 1w")
    return seconds
