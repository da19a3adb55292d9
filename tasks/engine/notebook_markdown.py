"""The executed notebook as Markdown, for the run's summary in the Prefect UI.

Prefect renders an artifact's Markdown, not a notebook, and a browser will not open a
``file://`` link from a web page, so the summary carries the notebook itself:
markdown cells as written, code with its outputs (text, tables, errors with the
notebook's own traceback), the failing cell marked, big outputs cut with a note, and
images embedded (or, when large, linked where the store gives a link a browser opens).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any

from nbformat import NotebookNode

MAX_OUTPUT_CHARS = 3_000  # one output, in the summary; the stored notebook has it all
MAX_NOTEBOOK_CHARS = 200_000  # the whole rendering's text: the UI stays quick to load
# Images are embedded (``data:`` URIs, which both Prefect UIs show) up to this size each
# (base64) and this much in all: a summary's charts then open from any machine, after
# any restart; a larger one is linked through the store.
MAX_INLINE_IMAGE_BYTES = 200_000
MAX_INLINE_TOTAL_BYTES = 1_000_000
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_HEADING = re.compile(r"^(#{1,6})(?=\s)", re.MULTILINE)


def _demoted(markdown: str) -> str:
    """A markdown cell's headings three levels down, under the summary's own."""
    return _HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + 3), markdown)


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _cut(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit:,} more characters in the stored notebook)"


def _fence(text: str, language: str = "") -> list[str]:
    ticks = "````" if "```" in text else "```"
    return [f"{ticks}{language}", text.rstrip("\n"), ticks]


class _Table(HTMLParser):
    """The first ``<table>`` of an HTML output, as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._depth += 1
        elif tag == "tr" and self._depth == 1:
            self.rows.append([])
        elif tag in ("td", "th") and self._depth == 1 and self.rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._depth -= 1
        elif tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_table_markdown(html: str, max_rows: int = 50) -> str | None:
    """A simple HTML table (a DataFrame's) as a Markdown table; None if there is none."""
    parser = _Table()
    parser.feed(html)
    rows = [row for row in parser.rows if row]
    if not rows:
        return None
    width = max(len(row) for row in rows)
    rows = [row + [""] * (width - len(row)) for row in rows]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    shown = [line(rows[0]), "|" + "---|" * width, *(line(row) for row in rows[1 : max_rows + 1])]
    if len(rows) > max_rows + 1:
        shown.append(f"\n({len(rows) - 1 - max_rows} more rows in the stored notebook)")
    return "\n".join(shown)


def _inline_image(data: Mapping[str, Any], mime: str, budget: list[int]) -> str | None:
    """The image as a ``data:`` URI if it is small enough and the budget allows."""
    content = data[mime]
    if mime == "image/svg+xml":
        encoded = base64.b64encode(_text(content).encode()).decode()
    else:
        encoded = "".join(_text(content).split())  # the notebook keeps it base64
    if len(encoded) > MAX_INLINE_IMAGE_BYTES or len(encoded) > budget[0]:
        return None
    budget[0] -= len(encoded)
    return f"data:{mime};base64,{encoded}"


def _output_lines(
    output: NotebookNode,
    where: tuple[int, int],
    links: Mapping[tuple[int, int], str],
    count: int | None = None,
    budget: list[int] | None = None,
) -> list[str]:
    kind = output.get("output_type")
    if kind == "stream":
        return _fence(_cut(_text(output.get("text", ""))))
    if kind == "error":
        traceback = _ANSI.sub("", "\n".join(output.get("traceback", [])))
        if count is not None and where[0] >= 0:  # "cell 3", as the heading says
            traceback = traceback.replace(f"Cell In[{count}]", f"cell {where[0]}")
        return _fence(_cut(traceback or f"{output.get('ename')}: {output.get('evalue')}"))
    data = output.get("data", {})
    link = links.get(where, "")
    for mime in ("image/png", "image/jpeg", "image/svg+xml"):
        if mime in data:
            title = f"cell {where[0]}, output {where[1]}"
            inline = _inline_image(data, mime, budget if budget is not None else [0])
            if inline is not None:  # opens wherever the summary does, for as long
                return [f"![{title}]({inline})"]
            if link.startswith(("http://", "https://")):
                return [f"![{title}]({link})"]
            return [f"(an image: {link or 'in the stored notebook'}; opens on the store's machine)"]
    if "application/json" in data:
        return _fence(_cut(json.dumps(data["application/json"], indent=2)))
    if "text/markdown" in data:
        return [_cut(_text(data["text/markdown"]))]
    if "text/html" in data:
        table = html_table_markdown(_text(data["text/html"]))
        if table is not None:
            return [table]
    if "text/plain" in data:
        return _fence(_cut(_text(data["text/plain"])))
    return []


def notebook_markdown(
    nb: NotebookNode,
    *,
    failed_cell: int | None = None,
    links: Mapping[tuple[int, int], str] | None = None,
    language: str = "python",
) -> str:
    """The executed notebook as Markdown.

    Args:
        nb: The executed (or partial) notebook; cells carry ``metadata.nbjobs.index``.
        failed_cell: The cell that raised (its index in the input notebook), marked.
        links: Browser links of the stored rich outputs, by ``(cell, output)``.
        language: For the code fences.

    Returns:
        Headed "cell N" as everywhere else (the log, the result, the traceback's
        ``In[...]`` is shown as the execution count only).
    """
    links = links or {}
    lines: list[str] = []
    budget = [MAX_INLINE_TOTAL_BYTES]
    for cell in nb.cells:
        meta = cell.get("metadata", {})
        index = (meta.get("nbjobs") or {}).get("index")
        tags = meta.get("tags", [])
        if cell.get("cell_type") == "markdown":
            if "papermill-error-cell-tag" not in tags:
                lines += [_demoted(_cut(_text(cell.get("source", "")))), ""]
            continue
        if cell.get("cell_type") != "code":
            continue
        status = (meta.get("nbjobs") or {}).get("status", "")
        count = cell.get("execution_count")
        title = "injected parameters" if index is None else f"cell {index}"
        facts = [part for part in (status, f"In[{count}]" if count else "") if part]
        heading = f"#### {title}" + (f" · {' · '.join(facts)}" if facts else "")
        if index is not None and index == failed_cell:
            heading += " · **failed here**"
        lines += [heading, ""]
        lines += _fence(_cut(_text(cell.get("source", ""))), language)
        for position, output in enumerate(cell.get("outputs", [])):
            rendered = _output_lines(
                output, (index if index is not None else -1, position), links, count, budget
            )
            if rendered:
                lines += ["", *rendered]
        lines.append("")
        embedded = MAX_INLINE_TOTAL_BYTES - budget[0]
        if sum(len(line) + 1 for line in lines) - embedded > MAX_NOTEBOOK_CHARS:
            lines.append("... (the rest is in the stored notebook)")
            break
    return "\n".join(lines)
