"""Faults a long search must survive, on real Ray: a trial that raises, a NaN, a retry from a
checkpoint, and the driver killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from reid_core.train import train
from tests.tuner.conftest import run_search, search_in_subprocess, sequential_search_args, wait_for
from tuner.results import read_trials
from tuner.search import main as search_main
from tuner.settings import SearchSettings

pytestmark = pytest.mark.ray

# Short trials: the chance rule looks only at the end, against a Go line just under chance.
SHORT = ["--max-steps", "40", "--grace-steps", "40", "--chance-margin", "0.02"]


def test_a_failing_trial_and_a_nan_trial_leave_rows_and_the_others_finish(ray_session, tmp_path, capsys):
    points = [{"head_lr": 3e-3}, {"head_lr": 2e-3}, {"head_lr": 1e30}]
    code, exp = run_search(tmp_path, "faults", points, extra=[*SHORT, "--inject-fault", "20:head_lr=0.002"])
    out = capsys.readouterr().out
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).set_index("head_lr")
    assert code == 1  # some trials failed: the exit code says so
    assert "1 errored" in out and "injected fault at step 20" in out
    failed = table.loc[2e-3]
    assert failed.end_reason == "error" and "RuntimeError: injected fault at step 20 (on node " in failed.error
    assert failed.steps == 19
    assert table.loc[1e30].end_reason == "diverged"
    assert table.loc[3e-3].end_reason == "completed" and table.loc[3e-3].steps == 40


def test_a_retried_trial_resumes_from_its_checkpoint_on_the_same_curve(ray_session, tmp_path):
    points = [{"head_lr": 3e-3}]
    extra = [*SHORT, "--inject-fault", "30:head_lr=0.003", "--max-failures", "1", "--checkpoint-every", "10"]
    code, exp = run_search(tmp_path, "retry", points, extra=extra)
    assert code == 0
    row = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).iloc[0]
    assert row.end_reason == "completed" and row.steps == 40
    (trial,) = read_trials(exp)
    assert [r["step"] for r in trial.rows] == list(range(1, 41))  # no gap, no duplicate step
    # The retry restored the step-20 checkpoint (from step 0 the fault would have fired again)
    # and continued the very curve an uninterrupted run draws.
    settings = SearchSettings.load(exp)
    plain: list[dict] = []
    train(settings.trial_config(trial.sampled), report=plain.append)
    assert [r["ce"] for r in trial.rows] == [r["ce"] for r in plain]


def _finished_trials(exp: Path, steps: int) -> int:
    done = 0
    for result in exp.glob("*/result.json"):
        lines = result.read_text().splitlines()
        done += bool(lines) and json.loads(lines[-1]).get("step") == steps
    return done


def _saved_terminated(exp: Path) -> int:
    """Trials Ray's newest experiment state (what a resume reads) holds as TERMINATED; 0 while it is unwritten
    or half-written."""
    states = sorted(exp.glob("experiment_state-*.json"))
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
        return sum(json.loads(t[0]).get("status") == "TERMINATED" for t in trials)
    except (ValueError, KeyError, IndexError, TypeError, FileNotFoundError):
        return 0


def test_driver_killed_with_sigkill_resumes_without_losing_or_repeating_trials(ray_session, tmp_path):
    points = [{"head_lr": 3e-3}, {"head_lr": 4e-3}, {"head_lr": 2e-3}]
    name = "killed"
    args, storage = sequential_search_args(tmp_path, name, points, extra=SHORT)
    exp = storage / name
    with search_in_subprocess(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as driver:
        ready = lambda: _finished_trials(exp, 40) >= 1 and _saved_terminated(exp) >= 1  # noqa: E731
        wait_for(ready, driver, "a finished trial saved in Ray's experiment state")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)

    before = {t.trial_id: t.rows[-1] for t in read_trials(exp) if t.rows and t.rows[-1]["step"] == 40}
    assert before, "a trial had finished before the kill"

    assert search_main(["--resume", "--name", name, "--storage-path", str(storage)]) == 0
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert len(table) == 3 and table.trial_id.is_unique
    assert sorted(table.head_lr) == sorted(p["head_lr"] for p in points)
    for trial_id, last in before.items():  # what finished before the kill kept its result
        assert table.set_index("trial_id").loc[trial_id].final_ce_ema == last["ce_ema"]
    completed = table[table.end_reason == "completed"]
    assert len(completed) == 3
    best = json.loads((exp / "best_config.json").read_text())
    assert best["trial_id"] == completed.loc[completed.final_ce_ema.idxmin()].trial_id
