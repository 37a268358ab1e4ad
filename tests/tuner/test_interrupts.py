"""What a crash or a Ctrl-C leaves behind, on real experiments: one line and the right exit code,
nothing misread, nothing of the experiment rewritten."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tests.tuner.conftest import search_in_subprocess, sequential_search_args, wait_for
from tuner.optuna_storage import DEFAULT_FILE
from tuner.report import main as report_main
from tuner.search import main as search_main

pytestmark = pytest.mark.ray


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file of an experiment but the pictures the report redraws, by content."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".png"
    }


@pytest.fixture
def damaged(learner_and_stuck, tmp_path) -> Path:
    """A copy of the shared small search (head LR 1e-2 completed, 1e-6 stuck at chance) to break."""
    copy = tmp_path / "exp"
    shutil.copytree(learner_and_stuck[1], copy)
    return copy


def stuck_trial_dir(exp: Path) -> Path:
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    return exp / table.loc[table.end_reason == "stuck_at_chance", "trial_dir"].iloc[0]


def test_every_trial_records_why_it_ended_when_it_was_decided(learner_and_stuck):
    _, exp, table = learner_and_stuck
    for _, row in table.iterrows():
        record = json.loads((exp / row.trial_dir / "end_reason.json").read_text())
        assert record["end_reason"] == row.end_reason and record["step"] == row.steps


def test_a_corrupt_settings_file_is_one_line_naming_it_and_exit_2(damaged, capsys):
    (damaged / "reid_tune.json").write_text('{"base": {"head_lr": 0.01')  # a crash mid-write
    before = fingerprint(damaged)
    assert report_main([str(damaged), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reid_tune.json' is damaged" in err[0] and "Traceback" not in err[0]
    assert fingerprint(damaged) == before


def test_a_truncated_result_line_is_skipped_with_a_note_and_the_recorded_reason_kept(damaged, capsys):
    trial_dir = stuck_trial_dir(damaged)
    result = trial_dir / "result.json"
    lines = result.read_text().splitlines(keepends=True)
    result.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # the last line cut mid-write
    before = fingerprint(damaged)
    assert report_main([str(damaged), "--format", "csv", "--no-plots"]) == 0
    captured = capsys.readouterr()
    notes = captured.err.strip().splitlines()
    assert len(notes) == 1 and f"line {len(lines)} is unreadable" in notes[0]
    table = pd.read_csv(pd.io.common.StringIO(captured.out), dtype={"trial_id": str})
    stuck = table[table.head_lr == 1e-6].iloc[0]
    assert stuck.end_reason == "stuck_at_chance"  # as recorded when the stopper decided, not re-derived
    assert stuck.steps == len(lines) - 1 and "the curve ends at step" in stuck.damage
    assert pd.isna(table[table.head_lr == 1e-2].iloc[0].damage)
    assert fingerprint(damaged) == before


def test_an_unreadable_ray_state_file_marks_the_table_without_failing_it(damaged, capsys):
    for state in damaged.glob("experiment_state-*.json"):
        state.write_text("{")
    assert report_main([str(damaged), "--format", "csv", "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "experiment_state" in captured.err and "statuses unknown" in captured.err
    table = pd.read_csv(pd.io.common.StringIO(captured.out), dtype={"trial_id": str})
    assert sorted(table.end_reason) == ["completed", "stuck_at_chance"]  # the trials' own records still say


def test_storage_that_cannot_be_created_is_one_line_before_ray_starts(tmp_path, capsys):
    code = search_main(["--storage-path", "/proc/reid-tune-results", "--name", "x", "--skip-preflight"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--storage-path '/proc/reid-tune-results' cannot be created or written" in err[0]
    assert not Path("/proc/reid-tune-results").exists()


def _ended_trials(exp: Path) -> int:
    return len(list(exp.glob("*/end_reason.json")))


def test_ctrl_c_stops_the_search_exits_130_and_resume_finishes_it_in_the_same_optuna_study(ray_session, tmp_path):
    points = [{"head_lr": 3e-3}, {"head_lr": 4e-3}, {"head_lr": 2e-3}]
    name = "interrupted"
    args, storage = sequential_search_args(
        tmp_path, name, points, extra=["--max-steps", "120", "--grace-steps", "120", "--chance-margin", "0.02", "--optuna-storage"]
    )
    exp = storage / name
    url = f"sqlite:///{exp / DEFAULT_FILE}"  # its Optuna study, kept beside it (tuner.optuna_storage)
    with search_in_subprocess(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as driver:
        wait_for(lambda: _ended_trials(exp) >= 1, driver, "a trial ended")
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, _ = driver.communicate(timeout=600)  # a hang guard: Ray saves its state and stops the trials first

    assert driver.returncode == 130, out
    assert "Traceback" not in out and "FileNotFoundError" not in out
    assert [line for line in out.splitlines() if "WARNING" in line] == []  # Ray's start and stop notices kept off
    assert f"resume with: reid-tune search --resume --name {name} --storage-path {storage}" in out.strip().splitlines()[-1]
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert "unfinished" in set(table.end_reason) or len(table) < 3
    if (exp / "best_config.json").is_file():  # only a trial that ended can be the winner
        best = json.loads((exp / "best_config.json").read_text())
        assert table.set_index("trial_id").loc[best["trial_id"]].end_reason in ("completed", "asha")

    assert len(optuna.load_study(study_name=name, storage=url).trials) >= 1

    assert search_main(["--resume", "--name", name, "--storage-path", str(storage)]) == 0
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert len(table) == 3 and table.trial_id.is_unique
    assert sorted(table.head_lr) == sorted(p["head_lr"] for p in points)
    assert set(table.end_reason) == {"completed"}
    assert optuna.get_all_study_names(url) == [name]  # the resume continued the same study, no second one
    study = optuna.load_study(study_name=name, storage=url)
    assert sorted(t.params["head_lr"] for t in study.trials) == sorted(p["head_lr"] for p in points)
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}  # none left RUNNING
