"""Shared by the Ray tests: one Ray session (``ray.init`` costs ~4 s here) and one small real search.

Ray writes an authentication token under HOME on first start and its session
files under its temp dir: both point into a folder the session fixture removes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest

from tuner.search import main as search_main

# Searches here are sized to run in seconds: CE-only training (SDM warm-up longer than the run),
# 150 steps at most, a 60-step grace window.


@pytest.fixture(scope="session")
def ray_session():
    import ray

    root = tempfile.mkdtemp(prefix="rt-")  # short: Ray's socket paths must stay under 107 characters
    saved_home = os.environ.get("HOME")
    os.environ["HOME"] = root
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=os.path.join(root, "ray"),
        configure_logging=False,
    )
    try:
        yield root
    finally:
        ray.shutdown()
        if saved_home is not None:
            os.environ["HOME"] = saved_home
        shutil.rmtree(root, ignore_errors=True)


MAX_STEPS, GRACE_STEPS, BATCH = 150, 60, 32
GO_LINE = math.log(400) - 0.39  # 5.6


def run_search(tmp_path, name, points, extra=(), space="head_lr: {loguniform: [1.0e-6, 1.0e-1]}\n"):
    (tmp_path / f"{name}-space.yaml").write_text(space)
    (tmp_path / f"{name}-points.json").write_text(json.dumps(points))
    code = search_main(
        [
            "--space", str(tmp_path / f"{name}-space.yaml"),
            "--points-to-evaluate", str(tmp_path / f"{name}-points.json"),
            "--num-trials", str(len(points)),
            "--max-steps", str(MAX_STEPS),
            "--grace-steps", str(GRACE_STEPS),
            "--storage-path", str(tmp_path / "results"),
            "--name", name,
            "--set", "ce_only_steps=1000", f"batch_size={BATCH}",
            *extra,
        ]
    )
    return code, tmp_path / "results" / name


@pytest.fixture(scope="session")
def learner_and_stuck(ray_session, tmp_path_factory):
    """One small real search shared by the search and report tests: head LR 1e-2 learns, 1e-6 is stuck."""
    tmp = tmp_path_factory.mktemp("search")
    code, exp = run_search(tmp, "mixed", [{"head_lr": 1e-2}, {"head_lr": 1e-6}])
    return code, exp, pd.read_csv(exp / "results.csv", dtype={"trial_id": str})


def sequential_search_args(tmp_path, name, points, extra=()) -> tuple[list[str], "os.PathLike"]:
    """Arguments of a search that runs its trials one at a time (CE-only, no pre-flight), and its storage."""
    (tmp_path / "space.yaml").write_text("head_lr: {loguniform: [1.0e-6, 1.0e-1]}\n")
    (tmp_path / "points.json").write_text(json.dumps(points))
    storage = tmp_path / "results"
    args = [
        "--space", str(tmp_path / "space.yaml"), "--points-to-evaluate", str(tmp_path / "points.json"),
        "--num-trials", str(len(points)), "--max-concurrent", "1", "--skip-preflight", *extra,
        "--storage-path", str(storage), "--name", name, "--set", "ce_only_steps=1000", f"batch_size={BATCH}",
    ]  # fmt: skip
    return args, storage


@contextlib.contextmanager
def search_in_subprocess(args, **popen):
    """``python -m tuner.search ARGS`` in a fresh interpreter with a Ray of its own (own HOME and temp dir,
    short paths); on exit its process group is killed, whatever of its Ray is left, and the folder removed."""
    ray_home = tempfile.mkdtemp(prefix="rs-")
    env = dict(os.environ, HOME=ray_home, RAY_TMPDIR=ray_home)
    driver = subprocess.Popen([sys.executable, "-m", "tuner.search", *args], env=env, start_new_session=True, **popen)
    try:
        yield driver
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.wait()
        shutil.rmtree(ray_home, ignore_errors=True)


def wait_for(condition, driver, what: str, timeout_s: float = 600) -> None:
    """Poll ``condition()`` until true; fail if the search ends first or ``timeout_s`` passes (a hang guard:
    the search's own progress is the event waited on, however slow a loaded machine makes it)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert driver.poll() is None, f"the search ended before {what}"
        assert time.monotonic() < deadline, f"{what} did not happen in time"
        time.sleep(0.3)


# A search where one knob decides: head_lr spread over 1e-7..1e-1 on a log grid, and ce_only_steps, which does
# not matter here (every value is longer than the run: the runs are CE-only whatever it is), shuffled against it.
# Its Optuna study is kept in SQLite. Shared by the importance, --optuna-storage and --html tests.
KNOB_POINTS = [
    {"head_lr": lr, "ce_only_steps": steps}
    for lr, steps in zip([1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 1e-1], [1700, 1100, 1900, 1300, 1500, 1200, 1800, 1400])
]
KNOB_SPACE = "head_lr: {loguniform: [1.0e-7, 1.0e-1]}\nce_only_steps: {randint: [1000, 2000]}\n"


@pytest.fixture(scope="session")
def knob_search(ray_session, tmp_path_factory):
    """``(exit code, experiment folder, printed output, the study's storage URL)``."""
    tmp = tmp_path_factory.mktemp("knobs")
    url = f"sqlite:///{tmp / 'study.db'}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code, exp = run_search(tmp, "knobs", KNOB_POINTS, extra=["--optuna-storage", url, "--skip-preflight"], space=KNOB_SPACE)
    return code, exp, out.getvalue(), url
