"""Alert conditions on a run's results, in a form a person reads: ``outputs.error_rate > 0.05``.

Pure parsing and evaluation, over the payload of a ``nbjobs.notebook.*`` event
(``tasks/events.py``). A condition is ``SUBJECT OP VALUE``:

- SUBJECT: ``outputs.NAME`` (and ``.KEY`` into a glued object), ``status``,
  ``duration`` (the run's seconds), ``cells[N].duration`` (cell N's seconds),
  ``peak_memory`` (the kernel's peak resident memory in the run, with what it started)
  or ``cells[N].peak_memory`` (in cell N);
- OP: ``>``, ``>=``, ``<``, ``<=``, ``==``, ``!=``;
- VALUE: a number, a word or quoted string (``failed``, ``"EUR"``), ``true``,
  ``false``, ``null``, a size for a memory (``2GiB``, ``300MiB``), or ``K x median`` /
  ``K x median(N)``: K times the median of the subject over the notebook's last N
  completed runs (10 by default; at least ``MIN_HISTORY`` are needed, else the
  condition does not hold).

Example:
    >>> condition = parse_condition("cells[3].duration > 3x median")
    >>> evaluate(condition, payload, history)
    'cells[3].duration = 9.12 > 3 x median 2.01 (last 10 runs)'
"""

from __future__ import annotations

import json
import operator
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from notebook_jobs.blocks.exceptions import AlertConditionError
from notebook_jobs.blocks.sizes import parse_size, size_text
from notebook_jobs.tasks.engine.numbers import number_text

DEFAULT_HISTORY_RUNS = 10
MIN_HISTORY = 3
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(
    r"^\s*(?P<subject>status|duration|peak_memory|outputs(?:\.[A-Za-z_][\w-]*)+"
    r"|cells\[(?P<cell>\d+)\]\.(?:duration|peak_memory))"
    r"\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>\S.*?)\s*$"
)
_MEDIAN = re.compile(r"^(?P<factor>\d+(?:\.\d+)?)\s*(?:x|\*)\s*median(?:\((?P<runs>\d+)\))?$")
_WORD = re.compile(r"^[A-Za-z_][\w.-]*$")
FORMS = (
    "outputs.NAME OP VALUE, status == failed, duration > SECONDS, "
    "cells[N].duration > K x median(RUNS), peak_memory > 2GiB, cells[N].peak_memory > 2x median"
)
MEMORY = ("peak_memory", ".peak_memory")  # subjects whose values are sizes


@dataclass(frozen=True)
class Condition:
    """A parsed condition; ``text`` is what was written."""

    text: str
    subject: str
    op: str
    value: Any = None
    factor: float | None = None  # K in "K x median"
    runs: int = DEFAULT_HISTORY_RUNS
    cell: int | None = None

    @property
    def needs_history(self) -> bool:
        return self.factor is not None


def parse_condition(text: str) -> Condition:
    """Read a condition.

    Raises:
        AlertConditionError: Says which forms are understood.
    """
    found = _CONDITION.match(text or "")
    if not found:
        raise AlertConditionError(
            f"cannot read the condition {text!r}; write one of: {FORMS}", condition=text
        )
    subject, op, raw = found.group("subject"), found.group("op"), found.group("value")
    cell = int(found.group("cell")) if found.group("cell") is not None else None
    median = _MEDIAN.match(raw)
    if median:
        if not (
            subject in ("duration", "peak_memory")
            or cell is not None
            or subject.startswith("outputs.")
        ):
            raise AlertConditionError(
                f"{subject} has no median: compare a duration or an output with K x median",
                condition=text,
            )
        runs = int(median.group("runs") or DEFAULT_HISTORY_RUNS)
        if runs < MIN_HISTORY:
            raise AlertConditionError(
                f"median({runs}): take at least {MIN_HISTORY} runs", condition=text
            )
        return Condition(
            text, subject, op, factor=float(median.group("factor")), runs=runs, cell=cell
        )
    if raw.lower().startswith("median"):
        raise AlertConditionError(
            f"{raw!r} in {text!r}: write K x median (1x median, 3x median(20))", condition=text
        )
    if subject.endswith(MEMORY) and raw[:1].isdigit() and not raw.isdigit():
        try:
            return Condition(text.strip(), subject, op, value=parse_size(raw), cell=cell)
        except ValueError as error:
            raise AlertConditionError(f"{error} in {text!r}", condition=text) from None
    return Condition(text.strip(), subject, op, value=_literal(raw, text), cell=cell)


def _literal(raw: str, text: str) -> Any:
    if raw[:1] in ("'", '"'):
        if len(raw) < 2 or raw[-1] != raw[0]:
            raise AlertConditionError(f"unclosed quote in {text!r}", condition=text)
        return raw[1:-1]
    try:
        return json.loads(raw)  # numbers, true, false, null
    except ValueError:
        pass
    if _WORD.match(raw):
        return raw
    raise AlertConditionError(
        f"cannot read the value {raw!r} in {text!r}: a number, a word, a quoted string, "
        "or K x median",
        condition=text,
    )


_MISSING = object()


def subject_value(condition: Condition, payload: dict[str, Any]) -> Any:
    """The subject's value in an event payload (``_MISSING`` when it has none)."""
    if condition.subject == "status":
        return payload.get("status", _MISSING)
    if condition.subject == "duration":
        return (payload.get("timings") or {}).get("total_seconds", _MISSING)
    if condition.subject == "peak_memory":
        peak = (payload.get("resources") or {}).get("peak_memory_bytes")
        return _MISSING if peak is None else peak
    if condition.cell is not None:
        field = "peak_memory_bytes" if condition.subject.endswith(MEMORY) else "duration_seconds"
        for cell in payload.get("cells") or []:
            if cell.get("index") == condition.cell and cell.get(field) is not None:
                return cell[field]
        return _MISSING
    value: Any = payload.get("outputs") or {}
    for part in condition.subject.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _shown(value: Any, memory: bool = False) -> str:
    number = _number(value)
    if number is not None and memory:
        return size_text(int(number))
    if number is not None:  # at full precision: 1234567, not 1.23457e+06
        return number_text(number)
    return json.dumps(value) if not isinstance(value, str) else value


def evaluate(
    condition: Condition, payload: dict[str, Any], history: list[dict[str, Any]] | None = None
) -> str | None:
    """Whether the condition holds for a run: what held, as a line, or ``None``.

    Args:
        condition: The parsed condition.
        payload: The run's event payload.
        history: Payloads of the notebook's earlier completed runs, newest first
            (for ``K x median``).
    """
    left = subject_value(condition, payload)
    if left is _MISSING:
        return None
    compare = _OPERATORS[condition.op]
    if condition.factor is not None:
        earlier = [
            n
            for n in (_number(subject_value(condition, past)) for past in (history or []))
            if n is not None
        ][: condition.runs]
        number = _number(left)
        if number is None or len(earlier) < MIN_HISTORY:
            return None
        median = statistics.median(earlier)
        if not compare(number, condition.factor * median):
            return None
        memory = condition.subject.endswith(MEMORY)
        return (
            f"{condition.subject} = {_shown(number, memory)} {condition.op} "
            f"{condition.factor:g} x median {_shown(median, memory)} (last {len(earlier)} runs)"
        )
    right = condition.value
    if condition.op in ("==", "!="):
        held = (
            compare(left, right)
            if _number(left) is None
            else compare(_number(left), _number(right))
        )
    else:
        a, b = _number(left), _number(right)
        held = a is not None and b is not None and compare(a, b)
    if not held:
        return None
    memory = condition.subject.endswith(MEMORY)
    return f"{condition.subject} = {_shown(left, memory)} {condition.op} {_shown(right, memory)}"


__all__ = ["Condition", "evaluate", "parse_condition"]
