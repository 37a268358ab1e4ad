"""``reid-tune``: one console script for the commands, as ``ray`` and ``optuna`` have.

    reid-tune search [...]   # = python -m tuner.search
    reid-tune report EXP     # = python -m tuner.report
    reid-tune train [...]    # = python -m reid_core.train: the plain run, no Ray (our function by default)
    reid-tune run [...]      # = the same command, where --trainable names your own function
    reid-tune simulate [...] # = python -m tuner.simulate (plan a search of thousands of trials)
    reid-tune diagnose RUN   # = python -m tuner.diagnose (the verdict a search would give a finished run)

Each subcommand takes the same flags as its ``python -m`` form; its module is imported only
when asked for, so ``reid-tune report`` loads neither Ray nor torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

# subcommand -> (module whose main(argv, prog) runs it, one line of help)
COMMANDS = {
    "search": ("tuner.search", "search head LR, accumulation and CE-only phase; stop trials stuck at chance"),
    "report": ("tuner.report", "tables, compute account and pictures of an experiment folder (no Ray needed)"),
    "train": ("reid_core.runner", "the plain run, no Ray: re-run a best_config.json (our function, or the one it names)"),
    "diagnose": ("tuner.diagnose", "the verdict, step and cause a search would give a finished run (a folder or a log)"),
    "simulate": ("tuner.simulate", "replay learning curves through the scheduler, stopping rule and searcher, no training"),
    "run": ("reid_core.runner", "the same plain run, for your own function (--trainable package.module:function)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: reid-tune {" + ",".join(COMMANDS) + "} [--help] ...\n\ncommands:\n" + "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"reid-tune: error: unknown command '{name}'; use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"reid-tune {name}")


if __name__ == "__main__":
    sys.exit(main())
