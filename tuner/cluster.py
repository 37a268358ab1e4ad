"""Joining an existing Ray cluster: reachable, authenticated, in seconds, with one line when not.

Checked against Ray 2.60. A head started with ``ray start --head`` has token authentication on
when a token exists where it runs (``~/.ray/auth_token``; Ray turned this on by default for
local clusters in 2.59). A 2.60 driver sends a token only when ``RAY_AUTH_MODE=token`` is set:
``RAY_AUTH_TOKEN_PATH`` alone is not enough. With a missing or wrong token, ``ray.init`` retries
for about 20 s while Ray's C++ client writes a warning a second to the terminal, then raises
"Failed to connect". So before the real connection:

1. `check_reachable`: a TCP connection to the address, 5 s at most (nothing listening: one line);
2. `use_token`: ``--auth-token-file`` (or Ray's own ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``)
   also sets ``RAY_AUTH_MODE=token``, so the token is really sent;
3. `check_handshake`: ``ray.init(address)`` in a child process whose stderr we read: the first
   ``InvalidAuthToken`` line ends it and becomes one line naming the fix; Ray's C++ warnings stay
   in the child. A cluster that accepts us costs the child's start, ~3 s.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from reid_core.errors import UserError

HANDSHAKE_TIMEOUT_S = 30.0  # a healthy cluster answers the child's ray.init in a few seconds
_REJECTED = ("InvalidAuthToken", "Unauthenticated", "AuthenticationError")
_HANDSHAKE = "import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); print('connected', flush=True)"
TOKEN_FIX = (
    "pass the head's token with --auth-token-file FILE (on the head node: ray get-auth-token, or the file "
    "~/.ray/auth_token of the user who ran ray start)"
)


def check_reachable(address: str) -> None:
    """Fail in seconds on an address nothing listens at (ray.init itself retries for minutes)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address '{address}' is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UserError(
            f"cannot reach the Ray cluster at '{address}': {err.strerror or err}; check that the head node is "
            "running and the address and port are right"
        ) from None


def use_token(auth_token_file: Optional[str]) -> None:
    """Make this process (and the handshake child) present the cluster's token, if one is given."""
    if auth_token_file:
        # Ray reads the token from this file itself; it never passes through our logs or exports.
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(Path(auth_token_file).expanduser().resolve())
    wants_token = any(os.environ.get(v) for v in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"))
    if wants_token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"  # without it a 2.60 driver does not send the token


def check_handshake(address: str, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """``ray.init(address)`` in a child process: returns when the cluster accepted it, or raises one
    `UserError` as soon as the child's stderr shows the token was refused (or it failed otherwise)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HANDSHAKE, address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
        start_new_session=True,
    )
    err_lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    buffer = b""
    try:
        while True:
            if child.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise UserError(
                    f"the Ray cluster at '{address}' did not accept a connection within {timeout_s:.0f} s; check "
                    f"that it is a Ray head's GCS port, and {TOKEN_FIX}"
                )
            ready, _, _ = select.select([child.stderr], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(child.stderr.fileno(), 65536)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            err_lines += [line.decode(errors="replace") for line in lines]
            if any(mark in line for line in err_lines for mark in _REJECTED):
                raise UserError(f"the Ray cluster at '{address}' refused this driver's token (missing or wrong); {TOKEN_FIX}")
        out = child.stdout.read().decode(errors="replace")
        err_lines += (buffer + child.stderr.read()).decode(errors="replace").splitlines()
        if child.returncode == 0 and "connected" in out:
            return
        if any(mark in line for line in err_lines for mark in _REJECTED):
            raise UserError(f"the Ray cluster at '{address}' refused this driver's token (missing or wrong); {TOKEN_FIX}")
        last = next((ln.strip() for ln in reversed(err_lines) if ln.strip()), f"exit code {child.returncode}")
        raise UserError(f"cannot connect to the Ray cluster at '{address}': {last[-300:]}; check the address and the cluster")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()
