"""A notebook's runs as a table: what the ``<notebook>-history`` artifact and ``nbjobs runs``
show of the runs ``tasks.history`` reads from Prefect.

A trend chart per numeric output (an SVG image inline, failures in red) above a row per
run, newest first: when, how it was started and by what, status, seconds, each glued
scalar value with its change from the run before, the parameters that differ from the
notebook's defaults, and a link to the run. Prefect-free: the runs come in as values.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from notebook_jobs.tasks.chart import SUCCEEDED, markdown_image, trend_svg
from notebook_jobs.tasks.engine.numbers import number_text, signed
from notebook_jobs.tasks.engine.run_context import SERIES_TRIGGERS, tick_text, zone_of
from notebook_jobs.tasks.ui_links import run_url

HISTORY_RUNS = 50
CHARTS = 6  # numeric outputs charted, at most
OUTPUT_COLUMNS = 8  # glued values shown as columns, at most


@dataclass
class HistoryRun:
    """One run of a notebook, as the history shows it."""

    id: str
    name: str
    started: datetime | None
    status: str  # completed, cached, failed, crashed, cancelled
    trigger: str  # cli, api, ui, schedule, batch
    deployment: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    changes: dict[str, float] = field(default_factory=dict)  # from the run before
    scheduled: datetime | None = None  # the tick it is for (its expected start)
    zone: str | None = None  # its schedule's time zone

    @property
    def for_tick(self) -> str:
        """The tick a scheduled or backfill run is for, in its schedule's zone; else ''."""
        if self.trigger not in SERIES_TRIGGERS or self.scheduled is None:
            return ""
        return tick_text(self.scheduled.astimezone(zone_of([self.zone])))

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCEEDED

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["started"] = self.started.isoformat() if self.started else None
        document["scheduled"] = self.scheduled.isoformat() if self.scheduled else None
        document["for"] = self.for_tick or None
        return document


def scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def numeric(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def with_changes(runs: list[HistoryRun]) -> list[HistoryRun]:
    """Each numeric output's change from the nearest older run that reported it."""
    for i, run in enumerate(runs):
        run.changes = {}
        for name, value in run.outputs.items():
            if not numeric(value):
                continue
            before = next(
                (
                    older.outputs[name]
                    for older in runs[i + 1 :]
                    if numeric(older.outputs.get(name))
                ),
                None,
            )
            if before is not None:
                run.changes[name] = value - before
    return runs


def merged(current: HistoryRun | None, older: list[HistoryRun]) -> list[HistoryRun]:
    """The run being published (not finished in the API yet) first, then the rest."""
    runs = [r for r in older if current is None or r.id != current.id]
    return with_changes(([current] if current else []) + runs)[:HISTORY_RUNS]


def output_columns(runs: list[HistoryRun]) -> list[str]:
    """The scalar outputs, newest runs' first, at most ``OUTPUT_COLUMNS``."""
    columns: list[str] = []
    for run in runs:
        for name, value in run.outputs.items():
            if scalar(value) and name not in columns:
                columns.append(name)
    return columns[:OUTPUT_COLUMNS]


def _cell(text: str, limit: int = 80) -> str:
    flat = " ".join(str(text).split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat.replace("|", "\\|")


def value_text(value: Any, change: float | None = None) -> str:
    """A glued value as the table shows it: numbers at full precision, with the change."""
    if numeric(value):
        text = number_text(value)
        if change:
            text += f" ({signed(change)})"
        return text
    if isinstance(value, str):
        return value
    return json.dumps(value)


def started_by(run: HistoryRun) -> str:
    """``schedule · daily``; a command-line run's deployment (the general one that
    ``nbjobs run`` goes through on a worker) is not a choice its user made: ``cli``."""
    if run.deployment and run.trigger != "cli":
        return f"{run.trigger} · {run.deployment}"
    return run.trigger


def _when(started: datetime | None) -> str:
    if started is None:
        return ""
    return started.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def history_markdown(label: str, runs: list[HistoryRun], ui_url: str | None = None) -> str:
    """The history artifact: charts of the numeric outputs, then a row per run."""
    lines = [f"# {label}: the last {len(runs)} runs", ""]
    if not runs:
        return "\n".join([*lines, "No finished runs yet."])
    oldest_first = list(reversed(runs))
    charted = [
        name for name in output_columns(runs) if any(numeric(r.outputs.get(name)) for r in runs)
    ][:CHARTS]
    for name in charted:
        points = [
            (float(r.outputs[name]) if numeric(r.outputs.get(name)) else None, r.status)
            for r in oldest_first
        ]
        lines += [markdown_image(f"{name} over the last {len(runs)} runs", trend_svg(name, points))]
    if charted:
        lines += ["", "_Oldest on the left; a red mark is a run that did not complete._", ""]
    columns = output_columns(runs)
    series = any(run.for_tick for run in runs)  # a scheduled notebook: the tick each is for
    lines += [
        "| run | "
        + ("for | " if series else "")
        + "started (UTC) | by | status | seconds | "
        + "".join(f"{_cell(name, 40)} | " for name in columns)
        + "parameters |",
        "|---|"
        + ("---|" if series else "")
        + "---|---|---|---:|"
        + "---:|" * len(columns)
        + "---|",
    ]
    for run in runs:
        link = run_url(run.id, ui_url)
        title = _cell(run.name, 90)  # a name is at most 80 and its id
        status = run.status if run.succeeded else f"**{run.status}**"
        if run.error and not run.succeeded:
            status += f": {_cell(run.error, 120)}"
        values = "".join(
            f"{_cell(value_text(run.outputs[name], run.changes.get(name)), 60)} | "
            if name in run.outputs
            else " | "
            for name in columns
        )
        parameters = " ".join(
            f"{name}={value if isinstance(value, str) else json.dumps(value)}"
            for name, value in run.parameters.items()
        )
        seconds = f"{run.seconds:.2f}" if run.seconds is not None else ""
        tick = f"{run.for_tick} | " if series else ""
        lines.append(
            f"| {f'[{title}]({link})' if link else title} | {tick}{_when(run.started)} | "
            f"{started_by(run)} | {status} | {seconds} | {values}{_cell(parameters, 120)} |"
        )
    return "\n".join(lines)


def without_defaults(runs: list[HistoryRun], defaults: dict[str, Any] | None) -> list[HistoryRun]:
    """Each run's parameters less those equal to the notebook's defaults: what differs."""
    if defaults:
        missing = object()
        for run in runs:
            run.parameters = {
                k: v for k, v in run.parameters.items() if defaults.get(k, missing) != v
            }
    return runs
