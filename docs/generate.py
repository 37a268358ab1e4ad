"""Rewrite the docs' reference tables from the code's own declarations, so they cannot drift.

    python docs/generate.py            # rewrite every generated block of README.md and docs/*.md
    python docs/generate.py --check    # change nothing; exit 1 naming each page that is out of date

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``; NAME is
one of `TABLES` (the causes in `diagnose`'s walk order, the end reasons, the step and evaluation
metrics) or ``flags COMMAND`` (a ``reid-tune`` command's flags, read from its ``build_parser()``).
The reid_core tables import neither Ray nor torch; only the flag tables import the commands.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python docs/generate.py"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def pages() -> list[Path]:
    """Every page that may hold a generated block: the README and docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def causes_table() -> str:
    from reid_core.causes import NO_CAUSE, WALK

    rows = [(f"`{c.name}`" + (f" ({c.variant})" if c.variant else ""), c.doc, c.fix) for c in (*WALK, NO_CAUSE)]
    return _table(("stuck_cause, in the order tried", "what the metrics show", "the fix printed"), rows)


def _terms_table(terms, header: str) -> str:
    return _table((header, "what it means"), [(f"`{t.name}`", t.doc) for t in terms])


def end_reasons_table() -> str:
    from reid_core.schema import END_REASON_TERMS

    return _terms_table(END_REASON_TERMS, "end_reason")


def step_metrics_table() -> str:
    from reid_core.schema import STEP_METRIC_TERMS

    return _terms_table(STEP_METRIC_TERMS, "metric (metrics.csv column order)")


def eval_metrics_table() -> str:
    from reid_core.schema import EVAL_METRIC_TERMS

    return _terms_table(EVAL_METRIC_TERMS, "metric")


TABLES: dict[str, Callable[[], str]] = {
    "causes": causes_table,
    "end reasons": end_reasons_table,
    "step metrics": step_metrics_table,
    "eval metrics": eval_metrics_table,
}


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``reid-tune COMMAND``, as the console script builds it (tuner.cli.COMMANDS)."""
    from tuner.cli import COMMANDS

    if command not in COMMANDS:
        raise KeyError(f"no reid-tune command '{command}'; known: {', '.join(COMMANDS)}")
    parser = importlib.import_module(COMMANDS[command][0]).build_parser()
    parser.prog = f"reid-tune {command}"
    return parser


def _flag(action: argparse.Action) -> str:
    """How the flag is typed: its option strings and what follows them, as argparse's usage shows it."""
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or ("{" + ",".join(map(str, action.choices)) + "}" if action.choices else _PLACEHOLDER.get(action.type, "VALUE"))
    shape = {"+": f"{metavar} [{metavar} ...]", "*": f"[{metavar} ...]", "?": f"[{metavar}]"}.get(action.nargs, metavar)
    return ", ".join(f"{o} {shape}" for o in action.option_strings) if action.option_strings else shape


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = (action.help or "") % {"default": action.default, "prog": parser.prog}
    shown = action.default not in (None, False, [], argparse.SUPPRESS)
    if shown and "default" not in text:  # every flag's default said once: the help's own words, or here
        text += f" (default {action.default})"
    return text + (" (required)" if action.required else "")


def flags_table(command: str) -> str:
    """One table of the command's flags; one per argument group, under its title, where it has groups."""
    parser = command_parser(command)
    parts = []
    for group in parser._action_groups:  # argparse keeps its groups only here; --help prints them in this order
        shown = [a for a in group._group_actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
        if shown:
            title = "" if group.title in _PLAIN else f"*{group.title}*\n\n"
            parts.append(title + _table(("flag", "what it does"), [(f"`{_flag(a)}`", _help(a, parser)) for a in shown]))
    return "\n".join(parts)


_PLACEHOLDER = {int: "N", float: "X"}  # a flag without a metavar: what it takes, not argparse's DEST_IN_CAPITALS
_PLAIN = ("positional arguments", "options", "optional arguments")  # argparse's own group titles


def block(name: str) -> str:
    """The generated text of the block called ``name``."""
    if name.startswith("flags "):
        return flags_table(name.split(" ", 1)[1])
    if name not in TABLES:
        raise KeyError(f"unknown generated block '{name}'; known: {', '.join(TABLES)}, flags COMMAND")
    return TABLES[name]()


def regenerate(text: str) -> str:
    """``text`` with every generated block rewritten."""
    return BLOCK.sub(lambda m: m.group(1) + block(m.group("name")) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each page out of date")
    args = p.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()
        new = regenerate(text)
        if new != text:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(new)
    for page in stale:
        print(f"{page}: {'out of date' if args.check else 'rewritten'}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from anywhere: the checkout's packages, not an installed copy
    sys.exit(main())
