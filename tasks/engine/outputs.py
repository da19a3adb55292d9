"""What a notebook reports, read from the executed notebook: glued values, rich outputs.

A notebook reports a value by *gluing* it, scrapbook's convention: a ``display_data``
output with the MIME type ``application/scrapbook.scrap.json+json``. scrapbook is
not required, neither here nor in the kernel; this three-line function in a notebook
does the same as ``scrapbook.glue(name, value)`` for JSON values::

    from IPython.display import display
    def glue(name, value):
        display({"application/scrapbook.scrap.json+json":
                 {"name": name, "data": value, "encoder": "json", "version": 1}},
                metadata={"scrapbook": {"name": name, "data": True, "display": False}}, raw=True)
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from nbformat import NotebookNode

SCRAP_JSON_MIME = "application/scrapbook.scrap.json+json"
SCRAP_TEXT_MIME = "application/scrapbook.scrap.text+json"
SCRAP_PREFIX = "application/scrapbook.scrap."


def read_scraps(nb: NotebookNode) -> tuple[dict[str, Any], list[str]]:
    """Collect glued scraps from an executed notebook; a later glue of a name wins.

    Returns:
        ``(outputs, notes)``: the values by name, and notes about scraps that could
        not be read (encoders other than json and text, such as pandas or arrow).
    """
    outputs: dict[str, Any] = {}
    notes: list[str] = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") not in ("display_data", "execute_result"):
                continue
            for mime, payload in output.get("data", {}).items():
                if not mime.startswith(SCRAP_PREFIX) or not isinstance(payload, dict):
                    continue
                name = payload.get("name")
                if not isinstance(name, str):
                    continue
                if mime in (SCRAP_JSON_MIME, SCRAP_TEXT_MIME):
                    outputs[name] = payload.get("data")
                else:
                    notes.append(
                        f"output {name!r} uses scrapbook encoder {payload.get('encoder')!r}, "
                        "which is not read; glue JSON values instead"
                    )
    return outputs, notes


# Rich outputs stored one file each, by MIME type. Other application/* types are
# stored too (with the subtype as extension); text/plain is the notebook's business.
DISPLAY_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/svg+xml": "svg",
    "text/html": "html",
    "application/json": "json",
    "application/pdf": "pdf",
}
_BASE64_TYPES = frozenset({"image/png", "image/jpeg", "application/pdf"})
_DISPLAY_NAME = re.compile(r"^cell-(\d+)-(\d+)\.([\w.+-]+)$")


def _extension(mime: str) -> str | None:
    if mime in DISPLAY_EXTENSIONS:
        return DISPLAY_EXTENSIONS[mime]
    if mime.startswith("application/") and not mime.startswith(SCRAP_PREFIX):
        return re.sub(r"[^\w.-]+", "-", mime.removeprefix("application/"))
    return None


def _payload(mime: str, data: Any) -> bytes:
    if isinstance(data, list):  # nbformat may split text into lines
        data = "".join(data)
    if mime in _BASE64_TYPES and isinstance(data, str):
        return base64.b64decode(data)
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data, indent=2).encode()


def write_displays(nb: NotebookNode, folder: Path) -> list[str]:
    """Write each cell's rich outputs to ``folder`` as ``cell-<cell>-<output>.<ext>``.

    ``<cell>`` is the cell's position in the input notebook (``metadata.nbjobs.index``,
    written by the execute step), ``<output>`` the output's among the cell's outputs.

    Returns:
        The names written, in notebook order.
    """
    written: list[str] = []
    for cell in nb.cells:
        index = (cell.get("metadata", {}).get("nbjobs") or {}).get("index")
        if index is None:
            continue
        for position, output in enumerate(cell.get("outputs", [])):
            if output.get("output_type") not in ("display_data", "execute_result"):
                continue
            for mime, data in output.get("data", {}).items():
                extension = _extension(mime)
                if extension is None:
                    continue
                name = f"cell-{index}-{position}.{extension}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(_payload(mime, data))
                written.append(name)
    return written


def display_of(name: str, size_bytes: int) -> dict[str, Any] | None:
    """What a stored display's file name says: its cell, output and content type."""
    match = _DISPLAY_NAME.match(name)
    if match is None:
        return None
    extension = match.group(3)
    types = {ext: mime for mime, ext in DISPLAY_EXTENSIONS.items()}
    return {
        "cell": int(match.group(1)),
        "output": int(match.group(2)),
        "content_type": types.get(extension, f"application/{extension}"),
        "size_bytes": size_bytes,
    }
