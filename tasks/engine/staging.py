"""Check and parameterise a notebook before any kernel starts.

Pure functions over notebook documents (reading them is ``fetch.py``'s). Everything
here raises a ``NotebookInputError`` subclass with a message that says what to fix.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

import nbformat
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
from nbformat import NotebookNode
from papermill.execute import ERROR_MARKER_TAG
from papermill.inspection import _infer_parameters
from papermill.translators import papermill_translators, translate_parameters

from notebook_jobs.blocks.exceptions import (
    CellSelectionError,
    ParameterValueError,
    RequestTooLargeError,
    UnknownParameterError,
)
from notebook_jobs.tasks.engine.parameters import (
    PARAMETERS_TAG,
    literal_type,
    name_problem,
    notebook_language,
    parameters_cell_source,
    parse_parameters,
)

# Limits on what a caller sends, checked before any kernel starts: a request within
# them is one no notebook needs more than, and one beyond them is an attack or a bug.
MAX_PARAMETER_DEPTH = 32
MAX_PARAMETERS = 1000
MAX_PARAMETERS_JSON_BYTES = 10_000_000

INJECTED_TAG = "injected-parameters"
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def kernel_name_of(nb: NotebookNode, requested: str | None) -> str:
    """The kernel to run: the requested one, else the notebook's, else ``python3``.

    Read as jupyter_client reads a name: without regard to case, and ``python`` means
    ``python3`` (``KernelManager``).
    """
    name = requested or nb.metadata.get("kernelspec", {}).get("name") or NATIVE_KERNEL_NAME
    name = str(name).lower()
    return NATIVE_KERNEL_NAME if name == "python" else name


def declared_parameters(
    nb: NotebookNode, kernel: str | None = None, language: str | None = None
) -> list[dict[str, Any]]:
    """The parameters the notebook's ``parameters`` cell declares.

    A Python cell is read with ``ast`` (``tasks.parameters``); other languages, and a
    cell that is not valid Python, as papermill's translator for the kernel infers them.
    ``language`` overrides the notebook's own, as papermill's ``--language`` does.

    Returns:
        One dict per parameter: ``name``, ``type`` (inferred type name or ``None``),
        ``default`` (the source text of the default) and ``help`` (the comment).
    """
    source = parameters_cell_source(nb)
    if source is None:
        return []
    if (language or notebook_language(nb)) == "python":
        parsed = parse_parameters(source)
        if parsed is not None:
            return parsed
    found = _infer_parameters(nb, name=kernel, language=language)
    return [
        {
            "name": p.name,
            "type": (
                p.inferred_type_name
                if p.inferred_type_name not in (None, "None")
                else literal_type(p.default)
            ),
            "default": p.default,
            "help": p.help,
        }
        for p in found
    ]


def unreadable_language(
    nb: NotebookNode, kernel: str | None = None, language: str | None = None
) -> str | None:
    """The notebook's language if papermill's translator for it cannot read a
    parameters cell (it reads Python's only), else None."""
    spoken = language or notebook_language(nb)
    if spoken == "python":
        return None
    try:
        translator = papermill_translators.find_translator(kernel or "", spoken)
        translator.inspect(nbformat.v4.new_code_cell(""))
    except NotImplementedError:
        return spoken
    except Exception:  # a language papermill does not know is refused elsewhere
        return None
    return None


def notebook_defaults(nb: NotebookNode, kernel: str | None = None) -> dict[str, Any]:
    """The defaults the ``parameters`` cell writes as literals (``n = 10``; not ``today()``)."""
    defaults: dict[str, Any] = {}
    for declared in declared_parameters(nb, kernel):
        try:
            value = ast.literal_eval(declared.get("default") or "")
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        defaults[declared["name"]] = list(value) if isinstance(value, tuple) else value
    return defaults


def has_parameters_cell(nb: NotebookNode) -> bool:
    """True when a cell is tagged ``parameters``."""
    return any(PARAMETERS_TAG in c.metadata.get("tags", []) for c in nb.cells)


def check_json_value(name: str, value: Any, depth: int = 0) -> None:
    """Refuse values that cannot travel as JSON (to the kernel, over HTTP, into result.json).

    Raises:
        ParameterValueError: Names the offending parameter and what to send instead.
    """
    if depth > MAX_PARAMETER_DEPTH:
        raise ParameterValueError(name, f"nested deeper than {MAX_PARAMETER_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParameterValueError(
                name, f"{value!r} is not a JSON number; send null or a string instead"
            )
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_json_value(name, item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ParameterValueError(
                    name, f"has a key {key!r} of type {type(key).__name__}; JSON keys are strings"
                )
            check_json_value(name, item, depth + 1)
        return
    raise ParameterValueError(
        name,
        f"a value of type {type(value).__name__} cannot be carried as JSON; send a string, "
        "number, boolean, null, list or object (a date as an ISO 8601 string, say)",
    )


def check_parameter_limits(parameters: dict[str, Any]) -> None:
    """Refuse values that cannot travel as JSON, and requests over the limits.

    Over ``MAX_PARAMETERS`` names, nested deeper than ``MAX_PARAMETER_DEPTH``, or
    over ``MAX_PARAMETERS_JSON_BYTES`` as JSON.

    Raises:
        RequestTooLargeError: Says which limit, and by how much.
        ParameterValueError: A value that is not JSON, or nested too deep.
    """
    if len(parameters) > MAX_PARAMETERS:
        raise RequestTooLargeError(
            "the request's parameters", len(parameters), MAX_PARAMETERS, "names"
        )
    for name, value in parameters.items():
        check_json_value(name, value)  # depth first: json.dumps would recurse without bound
    size = len(json.dumps(parameters, default=str).encode())
    if size > MAX_PARAMETERS_JSON_BYTES:
        raise RequestTooLargeError(
            "the request's parameters as JSON", size, MAX_PARAMETERS_JSON_BYTES
        )


def check_parameters(
    nb: NotebookNode,
    parameters: dict[str, Any],
    kernel: str,
    *,
    language: str | None = None,
    strict: bool = False,
) -> list[str]:
    """Check parameter names and values; say what papermill would only warn about.

    Names the notebook does not declare are injected anyway, as papermill injects
    them, and so are parameters for a notebook with no ``parameters`` cell (at the
    top); ``strict`` refuses both instead.

    Returns:
        Warnings for the run's notes (and the caller's stderr), one line each.

    Raises:
        ParameterValueError: A name that is not an identifier (or is a keyword or a
            dunder), or a value that cannot be carried as JSON.
        UnknownParameterError: ``strict``, and a name is not declared.
    """
    for name in parameters:
        problem = name_problem(name)
        if problem:
            raise ParameterValueError(name, problem)
    check_parameter_limits(parameters)
    if not parameters:
        return []
    names = ", ".join(repr(name) for name in parameters)
    if not has_parameters_cell(nb):
        if strict:
            raise UnknownParameterError(list(parameters), [])
        return [
            f"the notebook has no cell tagged 'parameters': {names} went into a new first "
            "cell, as papermill does (tag the cell that sets the defaults 'parameters')"
        ]
    declared = [p["name"] for p in declared_parameters(nb, kernel, language)]
    unknown = [name for name in parameters if name not in declared]
    if not unknown:
        return []
    if strict:
        raise UnknownParameterError(unknown, declared)
    unread = unreadable_language(nb, kernel, language)
    if unread and not declared:
        return [
            f"{names} injected unchecked: papermill cannot read the parameters cell of a "
            f"{unread} notebook"
        ]
    listed = ", ".join(repr(name) for name in unknown)
    return [
        f"unknown parameter(s) {listed} injected anyway, as papermill does; the notebook "
        f"declares: {', '.join(declared) or 'none'} (--strict-parameters refuses instead)"
    ]


def select_cells(nb: NotebookNode, cells: str | list[int | str] | None) -> set[int] | None:
    """Turn a ``cells`` selection into the set of input-notebook indices to run.

    Items are indices (``3``), inclusive ranges (``"2-5"``) or tags (``"plots"``),
    as a list or one comma-separated string. The parameters cell is always included.

    Returns:
        The selected indices, or ``None`` for all cells.

    Raises:
        CellSelectionError: An index is out of range, or a tag matches no cell.
    """
    if cells is None or cells == "" or cells == []:
        return None
    items: list[int | str] = (
        [part.strip() for part in cells.split(",") if part.strip()]
        if isinstance(cells, str)
        else list(cells)
    )
    count = len(nb.cells)
    chosen: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise CellSelectionError(f"cells: {item!r} is neither an index, a range nor a tag")
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            index = int(item)
            if not 0 <= index < count:
                raise CellSelectionError(
                    f"cells: index {index} is out of range; "
                    f"the notebook has {count} cells (0-{count - 1})"
                )
            chosen.add(index)
            continue
        match = _RANGE.match(item)
        if match:
            start, end = int(match.group(1)), int(match.group(2))
            if start > end or end >= count:
                raise CellSelectionError(
                    f"cells: range {item!r} is not within 0-{count - 1} (inclusive, start <= end)"
                )
            chosen.update(range(start, end + 1))
            continue
        tagged = {i for i, c in enumerate(nb.cells) if item in c.metadata.get("tags", [])}
        if not tagged:
            raise CellSelectionError(f"cells: no cell is tagged {item!r}")
        chosen |= tagged
    chosen |= {i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.metadata.get("tags", [])}
    return chosen


def inject_parameters(
    nb: NotebookNode,
    parameters: dict[str, Any],
    kernel: str,
    *,
    language: str | None = None,
    report_mode: bool = False,
) -> tuple[NotebookNode, list[int | None]]:
    """Parameterise a copy of ``nb`` as papermill does.

    The injected cell goes after the ``parameters`` cell (at the top when there is
    none), or replaces an earlier run's injected cell. The error banners of an earlier
    papermill run are dropped. ``report_mode`` hides every code cell's source.

    Returns:
        The parameterised notebook (a copy) and, for each of its cells, the index of
        the input-notebook cell it came from (``None`` for the injected cell).
    """
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    origin: list[int | None] = list(range(len(nb.cells)))
    nb.metadata.setdefault("papermill", {})["parameters"] = parameters
    if parameters:
        source = translate_parameters(
            kernel, language or notebook_language(nb), parameters, "Parameters"
        )
        cell = nbformat.v4.new_code_cell(source=source)
        cell.metadata["tags"] = [INJECTED_TAG]
        existing = [i for i, c in enumerate(nb.cells) if INJECTED_TAG in c.metadata.get("tags", [])]
        if existing:
            nb.cells[existing[0]] = cell
            origin[existing[0]] = None
        else:
            anchor = next(
                (i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.metadata.get("tags", [])),
                -1,
            )
            nb.cells.insert(anchor + 1, cell)
            origin.insert(anchor + 1, None)
    kept = [i for i, c in enumerate(nb.cells) if ERROR_MARKER_TAG not in c.metadata.get("tags", [])]
    nb.cells = [nb.cells[i] for i in kept]
    origin = [origin[i] for i in kept]
    if report_mode:
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
    return nb, origin
