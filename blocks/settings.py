"""Where notebook-jobs keeps its own state, read without importing Prefect.

The command line reads these before it decides whether Prefect is needed at all, so
this module imports nothing but the standard library.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HOME_ENV = "NBJOBS_HOME"


def nbjobs_home() -> Path:
    """notebook-jobs' own folder: ``$NBJOBS_HOME``, else ``~/.nbjobs``.

    It holds run folders (``runs/``), spilled uploads (``spill/``), the default
    artefact store (``artefacts/``) and the local Prefect server (``server/``).
    """
    return Path(os.environ.get(HOME_ENV) or "~/.nbjobs").expanduser()


DEFAULT_STORE_ENV = "NBJOBS_STORE"
BLOCK_SPEC = re.compile(r"^(s3-bucket|local-file-system)/([a-z0-9][a-z0-9-]*)$")
BARE_BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


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
