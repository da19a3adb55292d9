"""Parameters from the command line, read exactly as papermill's CLI reads them.

Papermill users' scripts pass ``-p NAME VALUE`` (an int, a float, ``True``,
``False``, ``None``, else the string as typed: ``-p msg '"Hello"'`` keeps the quotes,
``true`` and ``[1, 2]`` stay strings), ``-r NAME VALUE`` (always a string), ``-y
YAML``, ``-f FILE.yaml`` and ``-b BASE64_YAML``. Papermill applies them in a fixed
order, whatever the order on the command line: ``-b``, ``-f``, ``-y``, then ``-p``,
then ``-r``; a later one overrides an earlier one of the same name. Deployments and
HTTP keep JSON, the API's own type system.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, ClassVar

from notebook_jobs.blocks.exceptions import OptionError


def resolve_type(value: str) -> Any:
    """A ``-p`` value as papermill reads it.

    Example:
        >>> [resolve_type(v) for v in ("007", "1_000", "2.5", "True", "null", '"x"')]
        [7, 1000, 2.5, True, 'null', '"x"']
    """
    if value == "True":
        return True
    if value == "False":
        return False
    if value == "None":
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)  # nan and inf too, as papermill reads them
    except ValueError:
        return value


def _load_yaml(text: str | bytes, origin: str) -> dict[str, Any]:
    """YAML as papermill loads it: safe, and dates stay strings."""
    import yaml  # only when -y, -f or -b is used

    class NoDatesSafeLoader(yaml.SafeLoader):  # type: ignore[misc]
        yaml_implicit_resolvers: ClassVar[dict[str, Any]] = {
            key: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
            for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

    try:
        loaded = yaml.load(text, Loader=NoDatesSafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise OptionError(f"{origin} is not valid YAML: {problem}{where}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise OptionError(f"{origin} must be a YAML mapping of names to values")
    return loaded


def read_parameters(
    *,
    p: list[list[str]] | None = None,
    r: list[list[str]] | None = None,
    y: list[str] | None = None,
    f: list[str] | None = None,
    b: list[str] | None = None,
) -> dict[str, Any]:
    """The parameters of a papermill-style command line, in papermill's order.

    Args:
        p: ``-p NAME VALUE`` pairs.
        r: ``-r NAME VALUE`` pairs (raw strings).
        y: ``-y`` YAML strings.
        f: ``-f`` YAML files.
        b: ``-b`` base64-encoded YAML strings.

    Returns:
        The merged parameters.

    Raises:
        OptionError: A YAML text, file or base64 value that cannot be read (the
            message says which).
    """
    merged: dict[str, Any] = {}
    for text in b or []:
        try:
            decoded = base64.b64decode(text, validate=True)
        except ValueError as error:
            raise OptionError(f"-b {text[:40]!r} is not base64: {error}") from error
        merged.update(_load_yaml(decoded, f"-b {text[:40]!r}"))
    for name in f or []:
        try:
            content = Path(name).expanduser().read_text()
        except OSError as error:
            raise OptionError(f"-f {name}: {error.strerror or error}") from error
        except UnicodeDecodeError as error:  # a ValueError: not a parse of ours to let through
            raise OptionError(f"-f {name} is not UTF-8 text: {error.reason}") from error
        merged.update(_load_yaml(content, f"-f {name}"))
    for text in y or []:
        merged.update(_load_yaml(text, f"-y {text[:40]!r}"))
    for name, value in p or []:
        merged[name] = resolve_type(value)
    for name, value in r or []:
        merged[name] = value
    return merged
