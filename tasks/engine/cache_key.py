"""The cache key of a run: everything its result depends on, as one SHA-256.

A run with ``cache`` on reuses a completed run with the same key. The key is built
from the notebook's code cells (sources, not outputs), the parameters (a secret by
its reference, never its value), the kernel's name, the input files' checksums, the
options that change what runs (cells, language, report mode) and an environment
fingerprint: a string the caller gives, else the hash of the lock file found beside a
local notebook or in a folder above it, else of the packages installed where the
worker runs. Pure and Prefect-free.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

from nbformat import NotebookNode

# in the order they are looked for, in the notebook's folder and each folder above it
LOCK_FILES = ("uv.lock", "poetry.lock", "pylock.toml", "Pipfile.lock", "requirements.txt")
MAX_FOLDERS_UP = 20
CHUNK_BYTES = 1 << 20


def code_sources(nb: NotebookNode) -> list[str]:
    """The sources of the notebook's code cells, in order (outputs and metadata left out)."""
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def input_checksums(folder: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of each input file (a folder: of each file in it, by relative path)."""
    found: dict[str, str] = {}
    for name in names:
        path = folder / name
        if path.is_dir():
            for item in sorted(p for p in path.rglob("*") if p.is_file()):
                found[str(item.relative_to(folder))] = file_sha256(item)
        elif path.is_file():
            found[name] = file_sha256(path)
    return found


def find_lock_file(origin: str) -> Path | None:
    """The lock file nearest a local notebook: its folder first, then each one above."""
    if "://" in origin or not origin.startswith("/"):
        return None
    folder = Path(origin).parent
    for _ in range(MAX_FOLDERS_UP):
        for name in LOCK_FILES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def _site_stamps() -> tuple[int, ...]:
    """When the folders packages are installed in last changed (an install changes them)."""
    stamps = []
    for entry in sys.path:
        try:
            stamps.append(os.stat(entry or ".").st_mtime_ns)
        except OSError:
            continue
    return tuple(stamps)


@functools.lru_cache(maxsize=4)
def _installed_packages(stamps: tuple[int, ...]) -> str:
    packages = sorted({f"{d.metadata['Name']}=={d.version}".lower() for d in distributions()})
    return hashlib.sha256("\n".join(packages).encode()).hexdigest()


def environment_fingerprint(given: str | None, origin: str) -> str:
    """What the environment is taken to be, as ``<where it came from> <hash>``.

    Example:
        >>> environment_fingerprint(None, "/repo/reports/report.ipynb")
        'uv.lock /repo/uv.lock sha256:3f2a...'
    """
    if given:
        return f"given {given}"
    lock = find_lock_file(origin)
    if lock is not None:
        return f"{lock.name} {lock} sha256:{file_sha256(lock)}"
    return f"installed packages sha256:{_installed_packages(_site_stamps())}"


def cache_key(
    *,
    code: list[str],
    parameters: dict[str, Any],
    kernel: str,
    inputs: dict[str, str],
    fingerprint: str,
    options: dict[str, Any],
) -> str:
    """The run's cache key: a SHA-256 over everything given, as canonical JSON.

    Example:
        >>> cache_key(code=["1 + 1"], parameters={}, kernel="python3", inputs={},
        ...           fingerprint="given v1", options={})[:12]
        '5604783bfe77'
    """
    document = {
        "code": code,
        "parameters": parameters,
        "kernel": kernel,
        "inputs": inputs,
        "environment": fingerprint,
        "options": options,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["cache_key", "code_sources", "environment_fingerprint", "input_checksums"]
