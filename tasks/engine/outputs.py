"""Values a notebook reports, read from the executed notebook.

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

from typing import Any

from nbformat import NotebookNode

SCRAP_JSON_MIME = "application/scrapbook.scrap.json+json"
SCRAP_TEXT_MIME = "application/scrapbook.scrap.text+json"
_SCRAP_PREFIX = "application/scrapbook.scrap."


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
                if not mime.startswith(_SCRAP_PREFIX) or not isinstance(payload, dict):
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
