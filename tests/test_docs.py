"""Docs that run: every command the README's tour and the getting-started page show is run
here, verbatim, on a fresh home, and each line the page shows after it must appear in what
it printed, in order (``...`` in a line stands for what differs from run to run).

A page's commands are the ``$`` lines of its ``console`` blocks (a line ending in ``\\``
goes on); they run one after another in one bash, from the repository's root, so
``eval``, variables and ``cd`` carry over as in the reader's shell.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
END = "@@nbjobs-docs-command-ended"
TWO_COMMANDS = [
    "bash .ci/setup && .venv/bin/nbjobs run examples/report.ipynb -p n 12 -p label squares",
    "bash .ci/run",
]


def clean_env(home: Path) -> dict[str, str]:
    """A reader's environment: no Prefect server configured, an empty home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NBJOBS_"))}
    return {**env, "NBJOBS_HOME": str(home / "nbjobs"), "PREFECT_HOME": str(home / "prefect")}


@dataclass
class Command:
    """A ``$`` line of a page and the lines the page shows it printing."""

    text: str
    shown: list[str] = field(default_factory=list)


def console_commands(markdown: str) -> list[Command]:
    """The commands of a page's ``console`` blocks, in order."""
    commands: list[Command] = []
    inside = continued = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```console"
            continued = False
            continue
        if not inside:
            continue
        if continued:
            commands[-1].text += "\n" + line
        elif line.startswith("$ "):
            commands.append(Command(line[2:]))
        elif commands:
            commands[-1].shown.append(line)
        continued = line.endswith("\\") and (continued or line.startswith("$ "))
    return commands


def shown_pattern(line: str) -> re.Pattern[str]:
    """A shown line as a pattern: ``...`` matches anything, the rest is literal."""
    return re.compile(".*".join(re.escape(part) for part in line.rstrip().split("...")))


def unmatched(shown: list[str], printed: list[str]) -> str | None:
    """The first shown line that is not in ``printed`` in order, else None."""
    at = 0
    for line in shown:
        if line.strip() == "...":
            continue
        pattern = shown_pattern(line)
        while at < len(printed) and not pattern.fullmatch(printed[at].rstrip()):
            at += 1
        if at == len(printed):
            return line
        at += 1
    return None


def run_page(page: Path, tmp_path: Path) -> None:
    """Run a page's commands in one bash on a fresh home; check each one's output."""
    commands = console_commands(page.read_text())
    assert commands, f"{page.name} shows no console commands"
    script = "exec 2>&1\n" + "".join(
        f"{command.text}\nprintf '\\n{END} %s\\n' \"$?\"\n" for command in commands
    )
    env = clean_env(tmp_path)
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    outputs = re.split(rf"^{END} (\d+)$", done.stdout, flags=re.MULTILINE)
    ran = len(outputs) // 2
    for index, command in enumerate(commands):
        assert index < ran, f"{page.name}: `{command.text}` never ended:\n{outputs[-1]}"
        printed, status = outputs[2 * index], int(outputs[2 * index + 1])
        assert status == 0, f"{page.name}: `{command.text}` exited {status}:\n{printed}"
        missing = unmatched(command.shown, printed.splitlines())
        assert missing is None, (
            f"{page.name}: `{command.text}` did not print\n  {missing}\nit printed:\n{printed}"
        )


def stop_server(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / ".venv/bin/nbjobs"), "server", "stop"],
        env=clean_env(tmp_path),
        capture_output=True,
        timeout=120,
    )


@pytest.mark.unit
def test_console_blocks_are_read_as_a_reader_types_them() -> None:
    page = "\n".join(
        [
            "```console",
            "$ echo one \\",
            "    two",
            "one two",
            "$ true",
            "```",
            "```bash",
            "$ not a console block",
            "```",
        ]
    )
    commands = console_commands(page)
    assert [c.text for c in commands] == ["echo one \\\n    two", "true"]
    assert commands[0].shown == ["one two"] and commands[1].shown == []
    assert unmatched(["a ... c", "d"], ["x", "a b c", "d"]) is None
    assert unmatched(["d", "a ... c"], ["a b c", "d"]) == "a ... c"


@pytest.mark.unit
def test_the_readme_shows_the_two_commands_and_runs_the_first_in_its_tour() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    typed = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert typed == TWO_COMMANDS
    assert console_commands(readme)[0].text == TWO_COMMANDS[0]
    # the second is this test run itself: CI runs it, and it ends by running pytest
    assert (ROOT / ".ci/run").read_text().rstrip().splitlines()[-1].startswith(".venv/bin/pytest")
    assert len(readme.splitlines()) <= 250


@pytest.mark.timeout(900)  # a first server start and a backfill, on a busy machine
@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_every_command_a_page_shows_runs_as_shown(page: str, tmp_path: Path) -> None:
    try:
        run_page(ROOT / page, tmp_path)
    finally:
        stop_server(tmp_path)
