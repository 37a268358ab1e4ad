"""Command-line plumbing shared by every entry point: one-line errors, exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


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
