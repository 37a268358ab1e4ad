"""The one exception type for mistakes a user can fix.

Every entry point catches :class:`UserError`, prints its message on one line
and exits with code 2 (see :func:`cli_exit`). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys


INTERRUPTED = 130  # exit code of a command ended by Ctrl-C: the shell's 128 + SIGINT


class UserError(Exception):
    """A bad input the user can fix; the message names the problem and the fix."""


def cli_exit(err: UserError, prog: str) -> int:
    """Print ``prog: error: MESSAGE`` on one line of stderr and return exit code 2."""
    message = " ".join(str(err).split())  # one line, whatever the message held
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
