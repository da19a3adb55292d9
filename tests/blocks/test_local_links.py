"""Signed links to local-store files: only the paths we signed open."""

from __future__ import annotations

import stat
import urllib.parse
from pathlib import Path

import pytest

from notebook_jobs.blocks.local_links import links_key, signed_link, signed_path

pytestmark = pytest.mark.unit


def test_a_signed_link_names_its_file_and_nothing_else(tmp_path: Path) -> None:
    key = links_key(tmp_path)
    assert stat.S_IMODE((tmp_path / "files.key").stat().st_mode) == 0o600
    assert links_key(tmp_path) == key  # made once, then read
    target = Path("/data/runs/run-notebook/3f2a/a b#c.png")
    link = signed_link("http://127.0.0.1:4280/", target, key)
    assert link.startswith("http://127.0.0.1:4280/files/")
    path = urllib.parse.urlsplit(link).path
    assert signed_path(path, key) == target
    # another file under the same signature, another key, or no signature: refused
    assert signed_path(path.replace("3f2a", "3f2b"), key) is None
    assert signed_path(path, b"another key") is None
    assert signed_path("/files/" + path.split("/", 3)[3], key) is None
    assert signed_path("/etc/passwd", key) is None
