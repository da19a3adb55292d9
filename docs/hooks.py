"""MkDocs hooks: the reference parts of the site, generated from the code when it is built.

A page holds a marker such as ``<!-- nbjobs: cli-reference -->`` where the generated text
goes, so the command line's reference, the settings and the error tree cannot drift from
what ``nbjobs`` takes, reads and raises.
"""

from __future__ import annotations

import re
from typing import Any

MARKER = re.compile(r"<!-- nbjobs: ([a-z-]+) -->")


def _cli_reference() -> str:
    from notebook_jobs.deployments.cli.parser import build_parser
    from notebook_jobs.deployments.cli.reference import cli_reference

    return cli_reference(build_parser())


def _settings() -> str:
    from notebook_jobs.blocks.settings import described

    rows = [
        f"| `{variable}` | {takes} | {default} | {doc} |"
        for variable, takes, default, doc in described()
    ]
    return "\n".join(["| variable | takes | default | what it is |", "|---|---|---|---|", *rows])


def _error_tree() -> str:
    from notebook_jobs.blocks import exceptions

    doc = exceptions.__doc__ or ""
    tree = doc.split("::", 1)[1].split("\n\n")[1]
    return "```\n" + "\n".join(line[4:] for line in tree.splitlines()) + "\n```"


GENERATORS = {"cli-reference": _cli_reference, "settings": _settings, "error-tree": _error_tree}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each marker with what its generator renders now."""

    def generated(match: re.Match[str]) -> str:
        return GENERATORS[match.group(1)]()

    return MARKER.sub(generated, markdown)
