"""Command-line plumbing shared by every entry point: one-line errors, exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Optional, Sequence


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: ...; see --help``) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config flags every command shares: ``--config FILE`` and ``--set key=value ...``."""
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML TrainConfig (an exported best_config.json works)")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="override config fields, e.g. --set head_lr=1e-3 grad_accum_steps=2",
    )


# Flags that stand for one config field each, with the metavar and help they show.
SHORTCUTS = {
    "data": ("PATH", "'synthetic' or a data set folder or annotation file (= --set data=PATH)"),
    "data_format": ("NAME", "the data set's format, when not detected: cuhk-pedes, icfg-pedes, rstpreid, market1501"),
    "model": ("NAME", "open_clip model name, e.g. ViT-B-16 (= --set model=NAME)"),
    "pretrained": (
        "TAG|FILE",
        "'auto' (default: reid-tiny's shipped weights, random init for other models), 'none', an open_clip tag "
        "(e.g. openai) or a local weights file (= --set pretrained=...)",
    ),
}


def add_shortcut_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--data``, ``--data-format``, ``--model``, ``--pretrained``: shortcuts for ``--set key=value``."""
    for key, (metavar, text) in SHORTCUTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, metavar=metavar, help=text)


def shortcut_values(args: argparse.Namespace) -> dict[str, str]:
    """The config values the shortcut flags given stand for, as typed (no YAML parsing: a path stays a path).
    They apply after ``--config`` and ``--set``, and win."""
    return {key: getattr(args, key) for key in SHORTCUTS if getattr(args, key, None) is not None}


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], prog: Optional[str] = None) -> argparse.Namespace:
    """``argv`` parsed, with errors and help under ``prog``: the name the user typed (``reid-tune train``,
    or the parser's own ``python -m ...``)."""
    if prog:
        parser.prog = prog
    return parser.parse_args(argv)
