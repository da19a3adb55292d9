"""What a Python notebook's ``parameters`` cell declares, read with ``ast``.

Pure and standard-library only, so ``nbjobs inspect`` answers without importing
papermill or Prefect. Papermill's Python inspector matches each line against a
regular expression; this reads the cell as Python instead, with the same result for
the cells papermill reads (``name = default  # help``, ``name: type = default``) and
a better one for the cells it does not (a ``=`` or ``#`` inside a string, a
dictionary over several lines).
"""

from __future__ import annotations

import ast
import io
import keyword
import tokenize
from typing import Any

PARAMETERS_TAG = "parameters"


def parameters_cell_source(notebook: dict[str, Any]) -> str | None:
    """The source of the first cell tagged ``parameters`` (nbformat 4), or ``None``."""
    for cell in notebook.get("cells", []):
        if PARAMETERS_TAG in (cell.get("metadata") or {}).get("tags", []):
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else str(source)
    return None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a parameter, or ``None`` when it can.

    Papermill writes ``name = value`` into the notebook unchecked, so a name that
    carries code (``x = 1; import os; os.system(...)  #``) would run it. A parameter
    name is a Python identifier, not a keyword and not a dunder.
    """
    if not isinstance(name, str) or not name.isidentifier():
        return "is not a valid parameter name (letters, digits and _, not starting with a digit)"
    if keyword.iskeyword(name):
        return "is a Python keyword, not a valid parameter name"
    if name.startswith("__"):
        return "starts with __; names with two leading underscores are reserved"
    return None


def notebook_language(notebook: dict[str, Any]) -> str:
    """A notebook's language: its kernelspec's, else its language_info's, else python."""
    metadata = notebook.get("metadata") or {}
    language = (metadata.get("kernelspec") or {}).get("language") or (
        metadata.get("language_info") or {}
    ).get("name")
    return str(language or "python")


def literal_type(source: str) -> str | None:
    """The Python type name of a literal default (``"3"`` -> ``int``), or ``None``."""
    try:
        value = ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return "None" if value is None else type(value).__name__


def _comments_by_line(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return comments


def parse_parameters(source: str) -> list[dict[str, Any]] | None:
    """The parameters a Python ``parameters`` cell assigns, in order.

    Returns:
        One dict per top-level assignment to a plain name: ``name``, ``type`` (the
        annotation, else the type of a literal default, else ``None``), ``default``
        (the source text of the value) and ``help`` (the comment on its last line);
        ``None`` when the cell is not valid Python (the caller may ask papermill).

    Example:
        >>> parse_parameters('n = 10  # rows\\nlabel: str = "x"')
        [{'name': 'n', 'type': 'int', 'default': '10', 'help': 'rows'}, {'name': 'label', ...
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    comments = _comments_by_line(source)
    found: list[dict[str, Any]] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, annotation, value = node.targets[0], None, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, annotation, value = node.target, node.annotation, node.value
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        default = ast.get_source_segment(source, value) or ""
        declared = ast.get_source_segment(source, annotation) if annotation else None
        if declared:
            declared = declared.strip("\"'")
        found.append(
            {
                "name": target.id,
                "type": declared if declared not in (None, "None") else literal_type(default),
                "default": default,
                "help": comments.get(node.end_lineno or node.lineno, ""),
            }
        )
    return found


def in_order(parameters: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    """``parameters`` with ``names`` first, in that order, then the rest as they were.

    Example:
        >>> in_order({"a": 1, "b": 2, "c": 3}, ["c", "a"])
        {'c': 3, 'a': 1, 'b': 2}
    """
    if not names:
        return parameters
    first = {name: parameters[name] for name in names if name in parameters}
    return {**first, **{k: v for k, v in parameters.items() if k not in first}}
