"""Keys in an artefact store: relative POSIX paths that cannot leave their run's prefix.

Prefect-free, for the engine (the run folder's layout) and the store alike.
"""

from __future__ import annotations

import re
import unicodedata

from notebook_jobs.blocks.exceptions import ArtefactStoreError

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=+@-]")
MAX_SEGMENT_CHARS = 200


def safe_key(*parts: str) -> str:
    """Join key parts into a relative POSIX key that cannot escape its prefix.

    Each part may itself contain ``/``. Empty, ``.`` and ``..`` segments are
    dropped, absolute paths lose their root, and characters outside a small safe
    set become ``_`` (unicode is NFKC-normalised first), so a notebook name or a
    file a notebook wrote can never address anything above the run's prefix.

    Args:
        *parts: Key fragments, e.g. a run prefix and a relative file path.

    Returns:
        The joined key, never empty, never starting with ``/``.

    Raises:
        ArtefactStoreError: Nothing is left of the parts once sanitised.

    Example:
        >>> safe_key("run/1", "../../etc/passwd")
        'run/1/etc/passwd'
    """
    segments: list[str] = []
    for part in parts:
        for raw in str(part).replace("\\", "/").split("/"):
            segment = unicodedata.normalize("NFKC", raw).strip()
            segment = _UNSAFE_CHARS.sub("_", segment)
            if segment in ("", ".", "..") or set(segment) == {"."}:
                continue
            segments.append(segment[:MAX_SEGMENT_CHARS])
    if not segments:
        raise ArtefactStoreError("artefact key is empty after sanitising")
    return "/".join(segments)
