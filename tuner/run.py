"""``python -m tuner.run``: the plain run of a training function, kept for old command lines: `reid_core.runner`."""

from __future__ import annotations

import sys

from reid_core.runner import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m tuner.run"))
