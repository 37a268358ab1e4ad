"""The search acts on its verdicts: when its stuck trials agree on a cause no searched value fixes (faults
planted in real trials with the testing hook ``--inject-fault plant:KIND``), it stops every trial, writes its
tables and exits 3 with one line naming the cause, the evidence and the fix; ``--keep-going`` runs them all."""

from __future__ import annotations

import pandas as pd
import pytest

from reid_core.actions import HALT_EXIT
from tests.tuner.conftest import run_search

pytestmark = pytest.mark.ray

THREE = [{"head_lr": 1e-2}, {"head_lr": 3e-3}, {"head_lr": 2e-2}]  # each learns when the labels are right


def table(exp) -> pd.DataFrame:
    return pd.read_csv(exp / "results.csv", dtype={"trial_id": str})


def test_labels_reshuffled_every_batch_stop_the_search_after_two_agreeing_trials(ray_session, tmp_path, capsys):
    code, exp = run_search(tmp_path, "shuffled", THREE, extra=["--skip-preflight", "--inject-fault", "plant:shuffled_labels"])
    out, err = capsys.readouterr()
    assert code == HALT_EXIT
    line = err.strip().splitlines()[-1]
    assert line.startswith("search stopped: 2 trials") and "labels_no_signal" in line and "check that labels belong" in line
    frame = table(exp)  # the tables are written as usual
    stuck = frame[frame.end_reason == "stuck_at_chance"]
    assert len(stuck) == 2 and set(stuck.stuck_cause) == {"labels_no_signal"}
    assert set(frame.end_reason) <= {"stuck_at_chance", "halted"}
    assert "stopped with the search" in out and (exp / "curves.png").exists()
    # images spent before the stop: under two trials' grace windows (60 steps x 32 images each)
    assert frame.samples.sum() < 2 * 60 * 32


def test_with_keep_going_every_trial_runs(ray_session, tmp_path, capsys):
    extra = ["--skip-preflight", "--inject-fault", "plant:shuffled_labels", "--keep-going"]
    code, exp = run_search(tmp_path, "going", THREE, extra=extra)
    assert code == 0 and "search stopped" not in capsys.readouterr().err
    frame = table(exp)
    assert len(frame) == 3 and "halted" not in set(frame.end_reason)


def test_a_head_no_gradient_reaches_stops_the_search_at_its_first_trial(ray_session, tmp_path, capsys):
    code, exp = run_search(tmp_path, "detached", THREE, extra=["--skip-preflight", "--inject-fault", "plant:detached_head", "--max-concurrent", "1"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == HALT_EXIT and line.startswith("search stopped: trial ") and "no_gradient" in line
    reasons = list(table(exp).end_reason)  # the other two never started, or were stopped with the search
    assert reasons.count("stuck_at_chance") == 1 and set(reasons) <= {"stuck_at_chance", "halted"}


def test_a_bad_plant_is_one_line_and_exit_2(tmp_path, capsys):
    code, _ = run_search(tmp_path, "badplant", THREE[:1], extra=["--inject-fault", "plant:nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown plant" in err[0]
