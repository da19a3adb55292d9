"""A trend chart of one output over a notebook's runs, as an SVG image inline in Markdown.

Both Prefect UIs render an image whose source is a ``data:image/...`` URI in a Markdown
artifact (V2's renderer lets exactly those through); neither needs a file server or a
network for it, so the chart opens wherever the artifact does, for as long as it is
kept. (V2 also renders Mermaid; V1 shows its source as text, so a Mermaid chart would be
half a chart.) The SVG says what it draws in its ``<desc>``, as JSON: a reader (or a
test) gets the chart's data without reading pixels.

Example:
    >>> svg = trend_svg("total", [(1.0, "completed"), (None, "failed"), (3.0, "completed")])
    >>> markdown_image("total", svg)[:30]
    '![total](data:image/svg+xml;ba'
"""

from __future__ import annotations

import base64
import json
import math
from html import escape

from notebook_jobs.tasks.engine.numbers import number_text

WIDTH, HEIGHT = 560, 150
LEFT, RIGHT, TOP, BOTTOM = 70, 16, 28, 22  # room for the axis labels and the title
LINE = "#2563eb"
FAILED = "#dc2626"
TEXT = "#6b7280"
SUCCEEDED = ("completed", "cached")  # a run's statuses that are not a failure


def trend_svg(name: str, points: list[tuple[float | None, str]]) -> str:
    """The chart of ``points``, oldest first: ``(value, status)`` per run; a run with no
    value (it failed before it reported one) is marked on the axis in red, a failed run
    with a value as a red dot on the line."""
    values = [value for value, _ in points if value is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if math.isclose(low, high):
        low, high = low - 1, high + 1
    span_x = max(len(points) - 1, 1)

    def x(i: int) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (i / span_x if len(points) > 1 else 0.5)

    def y(value: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - (value - low) / (high - low))

    line = " ".join(
        f"{x(i):.1f},{y(value):.1f}" for i, (value, _) in enumerate(points) if value is not None
    )
    marks = []
    for i, (value, status) in enumerate(points):
        failed = status not in SUCCEEDED
        if value is None:
            if failed:  # nothing to plot: a cross on the axis where the run would be
                cx, cy = x(i), HEIGHT - BOTTOM
                marks.append(
                    f'<path d="M{cx - 4:.1f},{cy - 4:.1f}L{cx + 4:.1f},{cy + 4:.1f}'
                    f'M{cx - 4:.1f},{cy + 4:.1f}L{cx + 4:.1f},{cy - 4:.1f}" '
                    f'stroke="{FAILED}" stroke-width="2"><title>{status}</title></path>'
                )
            continue
        colour = FAILED if failed else LINE
        marks.append(
            f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="{4 if failed else 2.5}" '
            f'fill="{colour}"><title>{escape(number_text(value))} ({status})</title></circle>'
        )
    data = {"output": name, "values": [v for v, _ in points], "status": [s for _, s in points]}
    last = next((value for value, _ in reversed(points) if value is not None), None)
    title = f"{name}: {number_text(last)} (latest)" if last is not None else name
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">'
        f"<desc>{escape(json.dumps(data))}</desc>"
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff" rx="4"/>'
        f'<text x="{LEFT}" y="16" fill="#111827" font-size="12">{escape(title)}</text>'
        f'<text x="{LEFT - 6}" y="{TOP + 4}" fill="{TEXT}" text-anchor="end">'
        f"{escape(number_text(high))}</text>"
        f'<text x="{LEFT - 6}" y="{HEIGHT - BOTTOM}" fill="{TEXT}" text-anchor="end">'
        f"{escape(number_text(low))}</text>"
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" '
        f'stroke="#d1d5db"/>'
        f'<text x="{LEFT}" y="{HEIGHT - 6}" fill="{TEXT}">oldest</text>'
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" fill="{TEXT}" text-anchor="end">latest</text>'
        f'<polyline fill="none" stroke="{LINE}" stroke-width="2" points="{line}"/>'
        f"{''.join(marks)}</svg>"
    )


def data_uri(content: bytes, content_type: str) -> str:
    """``content`` as a ``data:`` URI."""
    return f"data:{content_type};base64,{base64.b64encode(content).decode()}"


def markdown_image(alt: str, svg: str) -> str:
    """The chart as a Markdown image, embedded."""
    return f"![{alt}]({data_uri(svg.encode(), 'image/svg+xml')})"


def chart_data(svg: str) -> dict[str, object]:
    """What a chart made by ``trend_svg`` draws (its ``<desc>``)."""
    from html import unescape

    start, end = svg.index("<desc>") + len("<desc>"), svg.index("</desc>")
    found: dict[str, object] = json.loads(unescape(svg[start:end]))
    return found


__all__ = ["SUCCEEDED", "chart_data", "data_uri", "markdown_image", "trend_svg"]
