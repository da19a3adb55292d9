"""What changed between two runs: parameters, outputs, cells, text outputs and files.

Pure functions over two result documents (``result.json``), their executed notebooks
and the checksums of the files they wrote; ``nbjobs diff`` and the ``diff-runs`` flow
fetch those and print or publish what ``compare_runs`` finds.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from nbformat import NotebookNode

from notebook_jobs.blocks.sizes import size_text
from notebook_jobs.tasks.engine.numbers import signed

SLOWER_FACTOR = 2.0  # a cell this many times slower than before is flagged
MIN_FLAGGED_SECONDS = 0.05  # below this, a cell's time is noise, not a slowdown
GREW_FACTOR = 2.0  # a cell whose peak memory is this many times higher is flagged
MIN_FLAGGED_GROWTH_BYTES = 32 * 1024 * 1024  # less growth than this is noise
MAX_TEXT_DIFF_LINES = 40


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _changes(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in list(a) + [n for n in b if n not in a]:
        if name in a and name in b and a[name] == b[name]:
            continue
        row: dict[str, Any] = {"name": name, "a": a.get(name), "b": b.get(name)}
        if name not in b:
            row["change"] = "removed"
        elif name not in a:
            row["change"] = "added"
        else:
            row["change"] = "changed"
            if _numeric(a[name]) and _numeric(b[name]):
                row["delta"] = b[name] - a[name]
        rows.append(row)
    return rows


def cell_texts(nb: NotebookNode | None) -> dict[int, str]:
    """Each cell's text outputs (streams and ``text/plain``), by its input index."""
    texts: dict[int, str] = {}
    for cell in nb.cells if nb is not None else []:
        index = (cell.get("metadata", {}).get("nbjobs") or {}).get("index")
        if index is None or cell.get("cell_type") != "code":
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text = output.get("text", "")
            else:
                text = output.get("data", {}).get("text/plain", "")
            parts.append("".join(text) if isinstance(text, list) else str(text))
        texts[index] = "".join(parts)
    return texts


def compare_runs(
    a: dict[str, Any],
    b: dict[str, Any],
    *,
    notebooks: tuple[NotebookNode | None, NotebookNode | None] = (None, None),
    files: tuple[dict[str, str], dict[str, str]] = ({}, {}),
) -> dict[str, Any]:
    """Compare two runs' result documents (and notebooks and file checksums, if given).

    Returns:
        ``parameters`` and ``outputs`` (changed, added, removed; numeric deltas),
        ``cells`` (status, time or memory changed; ``slower`` when over
        ``SLOWER_FACTOR`` times and ``MIN_FLAGGED_SECONDS``, ``grew`` when its peak
        memory is over ``GREW_FACTOR`` times and ``MIN_FLAGGED_GROWTH_BYTES`` more),
        ``text`` (a unified diff per cell whose text outputs changed) and ``files``
        (added, removed, changed by checksum).

    Example:
        >>> compare_runs({"parameters": {"n": 1}, "outputs": {"t": 1}},
        ...              {"parameters": {"n": 2}, "outputs": {"t": 4}})["outputs"]
        [{'name': 't', 'a': 1, 'b': 4, 'change': 'changed', 'delta': 3}]
    """
    cells_a = {c["index"]: c for c in a.get("cells", [])}
    cells_b = {c["index"]: c for c in b.get("cells", [])}
    cells = []
    for index in sorted(set(cells_a) | set(cells_b)):
        one, two = cells_a.get(index, {}), cells_b.get(index, {})
        seconds_a, seconds_b = one.get("duration_seconds"), two.get("duration_seconds")
        slower = bool(
            _numeric(seconds_a)
            and _numeric(seconds_b)
            and seconds_b > SLOWER_FACTOR * seconds_a
            and seconds_b > MIN_FLAGGED_SECONDS
        )
        memory_a, memory_b = one.get("peak_memory_bytes"), two.get("peak_memory_bytes")
        grew = bool(
            _numeric(memory_a)
            and _numeric(memory_b)
            and memory_b > GREW_FACTOR * memory_a
            and memory_b - memory_a > MIN_FLAGGED_GROWTH_BYTES
        )
        if one.get("status") == two.get("status") and not slower and not grew:
            continue
        cells.append(
            {
                "index": index,
                "status": [one.get("status"), two.get("status")],
                "seconds": [seconds_a, seconds_b],
                "slower": slower,
                "peak_memory_bytes": [memory_a, memory_b],
                "grew": grew,
            }
        )
    texts_a, texts_b = cell_texts(notebooks[0]), cell_texts(notebooks[1])
    text = []
    for index in sorted(set(texts_a) | set(texts_b)):
        before, after = texts_a.get(index, ""), texts_b.get(index, "")
        if before == after:
            continue
        lines = list(
            difflib.unified_diff(
                before.splitlines(), after.splitlines(), "a", "b", lineterm="", n=1
            )
        )
        text.append({"index": index, "diff": "\n".join(lines[:MAX_TEXT_DIFF_LINES])})
    files_a, files_b = files
    changed_files = []
    for name in sorted(set(files_a) | set(files_b)):
        if files_a.get(name) == files_b.get(name):
            continue
        change = "added" if name not in files_a else "removed" if name not in files_b else "changed"
        changed_files.append({"name": name, "change": change})
    return {
        "a": {k: a.get(k) for k in ("flow_run_id", "status", "notebook")},
        "b": {k: b.get(k) for k in ("flow_run_id", "status", "notebook")},
        "parameters": _changes(
            a.get("parameters_used") or a.get("parameters") or {},
            b.get("parameters_used") or b.get("parameters") or {},
        ),
        "outputs": _changes(a.get("outputs") or {}, b.get("outputs") or {}),
        "cells": cells,
        "text": text,
        "files": changed_files,
    }


def comparison_markdown(
    found: dict[str, Any],
    names: tuple[str, str] | None = None,
    links: tuple[str | None, str | None] = (None, None),
) -> str:
    """The comparison as Markdown: the diff flow's artifact and ``nbjobs diff``'s output.

    Args:
        found: What ``compare_runs`` found.
        names: The two runs' names (default: their ids).
        links: Their pages in the UI, linked from the title.
    """

    def value(v: Any) -> str:
        return "" if v is None else f"`{json.dumps(v, default=str)[:80]}`"

    a, b = found["a"], found["b"]
    titles = []
    for run, name, link in zip((a, b), names or (None, None), links, strict=True):
        text = name or str(run["flow_run_id"])
        titles.append(
            f"[{text}]({link}) ({run['status']})" if link else f"{text} ({run['status']})"
        )
    lines = [f"# {titles[0]} → {titles[1]}", ""]
    for section in ("parameters", "outputs"):
        rows = found[section]
        lines.append(f"## {section}: {len(rows) or 'no'} change{'s' * (len(rows) != 1)}")
        if rows:
            lines += ["", "| name | a | b | change |", "|---|---|---|---|"]
            for row in rows:
                delta = f" ({signed(row['delta'])})" if "delta" in row else ""
                lines.append(
                    f"| {row['name']} | {value(row['a'])} | {value(row['b'])} | "
                    f"{row['change']}{delta} |"
                )
        lines.append("")
    lines.append(f"## cells: {len(found['cells']) or 'none'} changed")
    if found["cells"]:
        lines += ["", "| cell | status | seconds | peak memory | |", "|---:|---|---|---|---|"]
        for cell in found["cells"]:
            seconds = " → ".join("" if s is None else f"{s:.3f}" for s in cell["seconds"])
            status = " → ".join(str(s) for s in cell["status"])
            memory = " → ".join(
                "" if m is None else size_text(m) for m in cell.get("peak_memory_bytes") or []
            )
            flags = " ".join(f"**{flag}**" for flag in ("slower", "grew") if cell.get(flag))
            lines.append(f"| {cell['index']} | {status} | {seconds} | {memory} | {flags} |")
    lines.append("")
    lines.append(f"## text outputs: {len(found['text']) or 'none'} changed")
    for cell in found["text"]:
        lines += ["", f"cell {cell['index']}:", "```diff", cell["diff"], "```"]
    lines.append("")
    lines.append(f"## files: {len(found['files']) or 'none'} changed")
    lines += [f"- {f['name']}: {f['change']}" for f in found["files"]]
    return "\n".join(lines)
