"""The command line's reference page, rendered from the ``nbjobs`` argument parser itself.

The docs site's hook (``docs/hooks.py``) puts it into ``docs/cli-reference.md`` when the
site is built, so the reference cannot drift from the options ``nbjobs`` takes.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

USAGE_WIDTH_CHARS = 76  # the width of the docs theme's code blocks


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """Each subcommand of ``parser``: its name, its one-line help and its own parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH_CHARS)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    if action.nargs == 0:
        return ", ".join(f"`{flag}`" for flag in action.option_strings)
    metavar = action.metavar or action.dest.upper()
    shown = " ".join(metavar) if isinstance(metavar, tuple) else metavar
    return ", ".join(f"`{flag} {shown}`" for flag in action.option_strings)


def _what(action: argparse.Action) -> str:
    # as argparse expands it for --help: "(default %(default)s)" names the default itself
    text = (action.help or "") % dict(vars(action))
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text += f" (one of: {', '.join(str(choice) for choice in action.choices)})"
    shown = "%(default)" in (action.help or "")
    plain = action.default not in (None, [], "", argparse.SUPPRESS)
    if plain and not isinstance(action.default, bool) and not shown:
        text += f" (default: `{action.default}`)"
    return _cell(text.strip())


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = [
        f"| {_flags(action)} | {_what(action)} |"
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._SubParsersAction)
        and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
    ]
    return ["| argument | what it does |", "|---|---|", *rows] if rows else []


def _command(name: str, summary: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} `{name}`", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ".", ""]
    lines += ["```", _usage(parser), "```", ""]
    table = _options_table(parser)
    if table:
        lines += [*table, ""]
    for sub_name, sub_summary, sub in _subcommands(parser):
        lines += _command(f"{name} {sub_name}", sub_summary, sub, level + 1)
    return lines


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """The reference of every ``nbjobs`` subcommand as Markdown: usage and a table of options.

    Args:
        parser: the parser of the ``nbjobs`` command (``cli.parser.build_parser()``).

    Returns:
        Markdown with a section per subcommand (and per sub-subcommand), in the parser's
        order, each with its usage as ``nbjobs --help`` prints it and its options.
    """
    lines: list[str] = []
    for name, summary, sub in _subcommands(parser):
        lines += _command(f"{parser.prog} {name}", summary, sub, 2)
    return "\n".join(lines).rstrip() + "\n"
