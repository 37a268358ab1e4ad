"""A real Ray cluster on this machine: a `ray start --head` with token authentication on and two worker
nodes, joined the documented way through --address; trials spread over the nodes and survive a lost one.

Every Ray process here is started by `ray start` into the cluster's own temp folder and HOME, and
killed by PID at the end (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest

from tests.tuner.conftest import search_in_subprocess, sequential_search_args, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")
MAX_STEPS = 600  # the lost-node searches' budget: the kill comes between steps 20 and 550, seconds of steps to catch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(env: dict, *args: str) -> None:
    done = subprocess.run([RAY, "start", "--disable-usage-stats", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]


def _pids(pattern: str) -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()]


@contextlib.contextmanager
def _cluster():
    """Head (1 CPU, token auth on) + two worker nodes (1 CPU each) on loopback. Each worker's raylet listens on
    a port picked here, so its command line tells this cluster's worker nodes from the head and from any
    other Ray on the machine."""
    root = Path(tempfile.mkdtemp(prefix="rc-"))  # short: Ray's socket paths must stay under 107 characters
    home = root / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), RAY_AUTH_MODE="token")
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, timeout=60, check=True)
    address = f"127.0.0.1:{_free_port()}"
    workers = [_free_port(), _free_port()]
    try:
        _ray_start(env, "--head", "--node-ip-address", "127.0.0.1", "--port", address.split(":")[1], "--num-cpus", "1",
                   "--include-dashboard", "false", "--temp-dir", str(root / "r"))  # fmt: skip
        for port in workers:
            _ray_start(env, "--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                       "--node-manager-port", str(port))  # fmt: skip
        yield {"address": address, "token": home / ".ray" / "auth_token", "root": root, "worker_ports": workers}
    finally:
        for pid in _pids(str(root / "r")):  # every process of this cluster, and only those
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the tests that leave every node alive."""
    with _cluster() as c:
        yield c


@pytest.fixture
def own_cluster():
    """A cluster of its own for a test that kills a node: each such test starts with the head and both workers,
    whatever ran before it (a test that shared the module's cluster after another had killed one worker, and
    Ray had declared a second dead on a loaded machine, found only the head: its trials ran one after the other
    there, the search exited 0, and the test failed)."""
    with _cluster() as c:
        yield c


def _driver_env(tmp_path: Path) -> dict:
    """The driver runs as another user would: its own HOME, no token of the cluster's lying around."""
    home = tmp_path / "driver-home"
    home.mkdir(exist_ok=True)
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}


def _search(tmp_path, args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.search", *args], env=_driver_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("token", ["wrong", "missing"])
def test_a_wrong_or_missing_token_is_one_line_as_soon_as_the_cluster_refuses_it(cluster, tmp_path, token):
    args = ["--address", cluster["address"], "--skip-preflight", "--storage-path", str(tmp_path / "r"), "--name", "x"]
    if token == "wrong":
        (tmp_path / "token").write_text("0" * 32)
        args += ["--auth-token-file", str(tmp_path / "token")]
    done = _search(tmp_path, args)  # the timeout is a hang guard only
    # No clock: the refusal is read off the handshake child's stderr as Ray prints it, and the child is killed
    # then (tuner.cluster.check_handshake); waiting Ray's retries out would end in the other message ("did not
    # accept a connection within 30 s"), so the message below is the evidence that it came at the event
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused this driver's token" in lines[0] and "--auth-token-file" in lines[0]
    assert not (tmp_path / "r" / "x").exists()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, then theirs), read off /proc."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = Path(f"/proc/{parent}/task").iterdir()
            children = [int(c) for t in tasks for c in (t / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        found += children
        todo += children
    return found


def _kill_a_worker_node_running(cluster, trials: dict[str, int]) -> Optional[str]:
    """SIGKILL the raylet and every process under it (the node) of one of ``cluster``'s worker nodes, never the
    head, that runs a trial past its first checkpoint and well short of its budget (``trials``: node id -> that
    trial's newest step); returns its node id, or None when no worker node runs one now."""
    for pid in _pids(str(cluster["root"] / "r")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except FileNotFoundError:  # a process of the cluster that ended meanwhile
            continue
        if not any(f"--node_manager_port={port}" in args for port in cluster["worker_ports"]):
            continue
        node = next((n for n, step in trials.items() if f"--node_id={n}" in args and 20 <= step < MAX_STEPS - 50), None)
        if node is not None:
            # the node's processes too, as a lost machine takes them: a worker outlives its raylet for seconds
            # and, reporting to the driver directly, could finish its trial in them
            for victim in [pid, *_descendants(pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            return node
    return None


def _running_nodes(exp: Path) -> dict[str, int]:
    """node id -> step of the newest result of each trial folder that has one."""
    out = {}
    for result in exp.glob("*/result.json"):
        lines = result.read_text().splitlines()
        try:
            last = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            continue
        if last and last.get("node_id"):
            out[last["node_id"]] = last["step"]
    return out


def _search_losing_a_node(cluster, tmp_path, name: str, points: list[dict], extra: list[str]):
    """Run a search with every trial on its own node at once; as soon as a trial on a worker node is 20 steps in
    (past its first checkpoint), kill that node. Returns ``(driver, its output, the experiment folder, the lost
    node's id)``. The kill is the event waited on: no trial has to wait for another to start."""
    extra = ["--max-steps", str(MAX_STEPS), "--grace-steps", str(MAX_STEPS), "--chance-margin", "0.02", *extra,
             "--address", cluster["address"], "--auth-token-file", str(cluster["token"])]  # fmt: skip
    args, storage = sequential_search_args(tmp_path, name, points, extra=extra)
    args[args.index("--max-concurrent") + 1] = str(len(points))  # all at once: one per node
    exp = storage / name
    with search_in_subprocess(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as driver:
        lost: list[str] = []

        def killed() -> bool:
            node = _kill_a_worker_node_running(cluster, _running_nodes(exp))
            lost.extend([node] if node else [])
            return bool(lost)

        wait_for(killed, driver, "a trial 20 steps into its budget on a worker node")
        out, _ = driver.communicate(timeout=600)  # a hang guard only: Ray notices the lost node, the others finish
    return driver, out, exp, lost[0]


def test_a_search_joins_with_its_token_spreads_over_nodes_and_a_lost_nodes_trial_finishes_elsewhere(own_cluster, tmp_path):
    points = [{"head_lr": 3e-3}, {"head_lr": 4e-3}, {"head_lr": 2e-3}]
    extra = ["--max-failures", "2", "--checkpoint-every", "10"]
    driver, out, exp, lost = _search_losing_a_node(own_cluster, tmp_path, "lost", points, extra)
    assert driver.returncode == 0, out[-3000:]
    assert [ln for ln in out.splitlines() if "gcs_client" in ln or "refused" in ln] == []  # the token was accepted
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert len(table) == 3 and table.trial_id.is_unique  # none lost, none twice
    assert set(table.end_reason) == {"completed"}
    # the lost node's trial, finished elsewhere (on a loaded machine Ray may also declare another node dead by
    # its missed health checks: that node's trial moves too, and is not the one this test follows)
    moved = table[table.node_ids.str.startswith(lost) & table.node_ids.str.contains(";")]
    assert len(moved) == 1 and (table.node_ids.str.split(";").str[0] == lost).sum() == 1
    rows = [json.loads(ln) for ln in (exp / moved.trial_dir.iloc[0] / "result.json").read_text().splitlines()]
    steps = sorted({r["step"] for r in rows})
    assert steps == list(range(1, MAX_STEPS + 1))  # continuous across the move: it resumed from a checkpoint, not from 0
    assert min(r["step"] for r in rows if r["node_id"] == moved.node_ids.iloc[0].split(";")[1]) > 10


def test_without_retries_a_lost_nodes_trial_is_an_error_row_naming_the_node(own_cluster, tmp_path):
    points = [{"head_lr": 3e-3}, {"head_lr": 4e-3}]
    driver, out, exp, lost = _search_losing_a_node(own_cluster, tmp_path, "noretry", points, [])
    assert driver.returncode == 1, out[-3000:]  # a trial failed: the exit code says so
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert len(table) == 2 and set(table.end_reason) == {"error", "completed"}
    failed = table[table.end_reason == "error"].iloc[0]
    assert failed.node_ids == lost and f"(on node {lost[:8]})" in failed.error
