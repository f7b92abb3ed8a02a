"""MkDocs hook: the CLI reference, generated from the argparse definitions at build time.

A page that contains the marker ``<!-- adps-cli-reference -->`` gets it replaced by one section
per ``adps`` command, rendered from :func:`adps.cli.build_parser`: the command's usage line, its
description, and a table per argument group with each flag, its value, its default and its help
text, all as ``adps COMMAND --help`` prints them. Nothing here is typed by hand, so the page
cannot drift from the code: a renamed flag is renamed on the next build.

``render_cli_reference()`` is importable (tests/test_docs.py uses it) and needs no MkDocs.
"""

from __future__ import annotations

import argparse
import html

MARKER = "<!-- adps-cli-reference -->"


def _subcommands(parser: argparse.ArgumentParser) -> tuple[argparse._SubParsersAction, dict]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action, dict(action.choices)


def _text(value: str) -> str:
    """Plain text for a markdown table cell: HTML escaped, pipes and newlines made safe."""
    value = " ".join(value.split())
    return html.escape(value, quote=False).replace("|", "\\|")


def _code(value: str) -> str:
    return "<code>" + html.escape(value, quote=False).replace("|", "&#124;") + "</code>"


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return _code(action.metavar or action.dest)
    return ", ".join(_code(s) for s in action.option_strings)


def _value(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if action.nargs == 0:  # store_true, store_const, version, help
        return ""
    if action.choices is not None and action.metavar is None:
        return " \\| ".join(_code(str(c)) for c in action.choices)
    metavar = formatter._format_args(action, formatter._get_default_metavar_for_optional(action)
                                     if action.option_strings
                                     else formatter._get_default_metavar_for_positional(action))
    return _code(metavar)


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""
    if isinstance(action.default, (list, tuple)) and not action.default:
        return ""
    return _code(str(action.default))


def _help(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return _text(formatter._expand_help(action))  # fills %(default)s, turns %% into %


def render_command(name: str, parser: argparse.ArgumentParser, summary: str) -> str:
    formatter = parser._get_formatter()
    usage = parser.format_usage().strip()
    lines = [f"## adps {name}", "", f"*{_text(summary)}*" if summary else "", ""]
    lines += ["```text", usage, "```", ""]
    if parser.description:
        lines += [_text(parser.description), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = group.title or "arguments"
        lines += [f"**{_text(title[0].upper() + title[1:])}**", ""]
        if group.description:
            lines += [_text(group.description), ""]
        lines += ["| argument | value | default | description |", "|---|---|---|---|"]
        for action in actions:
            lines.append(f"| {_flags(action)} | {_value(action, formatter)} | "
                         f"{_default(action)} | {_help(action, formatter)} |")
        lines.append("")
    if parser.epilog:
        lines += [_text(parser.epilog), ""]
    return "\n".join(lines)


def render_cli_reference() -> str:
    from adps.cli import build_parser

    parser = build_parser()
    action, commands = _subcommands(parser)
    summaries = {a.dest: a.help or "" for a in action._choices_actions}
    out = ["```text", parser.format_help().strip(), "```", ""]
    out += ["| command | what it does |", "|---|---|"]
    out += [f"| [`adps {name}`](#adps-{name}) | {_text(summaries.get(name, ''))} |"
            for name in commands]
    out.append("")
    out += [render_command(name, sub, summaries.get(name, "")) for name, sub in commands.items()]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs API)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render_cli_reference())
    return markdown
