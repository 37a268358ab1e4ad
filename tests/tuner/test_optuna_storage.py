"""``--optuna-storage [URL]``: the search's Optuna study in a database that optuna.load_study and optuna-dashboard read.

The bad inputs are in tests/test_bad_input.py; here the URL rules, then real searches (`knob_search`: eight
trials, the study in SQLite) read back with Optuna and served by optuna-dashboard.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest

from reid_core.errors import UserError
from tuner.optuna_storage import DEFAULT_FILE, INTERMEDIATE_EVERY_STEPS, check_storage, dashboard_command, shown, storage_url
from tuner.search import main as search_main
from tuner.storage import StoragePath

from .conftest import BATCH


def test_no_url_is_a_sqlite_file_in_the_experiment_folder_and_a_relative_one_is_made_absolute(tmp_path, monkeypatch):
    assert storage_url("", tmp_path / "exp") == f"sqlite:///{tmp_path / 'exp' / DEFAULT_FILE}"
    monkeypatch.chdir(tmp_path)
    assert storage_url("sqlite:///studies.db", tmp_path / "exp") == f"sqlite:///{tmp_path / 'studies.db'}"
    assert storage_url("postgresql://me:secret@db/optuna", tmp_path) == "postgresql://me:secret@db/optuna"


def test_no_url_with_experiments_on_object_storage_asks_for_a_database_url():
    import pyarrow.fs as pafs

    exp = StoragePath(pafs.LocalFileSystem(), "/bucket/exp", "s3://bucket/exp")
    with pytest.raises(UserError, match="pass a database URL every node reaches"):
        storage_url("", exp)


def test_a_password_is_never_printed():
    assert shown("postgresql://me:secret@db/optuna") == "postgresql://me:***@db/optuna"
    assert dashboard_command("sqlite:////a b/optuna.db") == "optuna-dashboard 'sqlite:////a b/optuna.db'"


def test_the_checks_write_nothing_and_find_a_study_of_the_same_name(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    check_storage(url, "exp")
    assert list(tmp_path.iterdir()) == []  # not even an empty database file
    optuna.create_study(storage=url, study_name="exp")
    before = (tmp_path / "new.db").read_bytes()
    check_storage(url, "another")
    with pytest.raises(UserError, match="already holds a study named 'exp'; pass a new --name, or delete that study: optuna delete-study"):
        check_storage(url, "exp")
    assert (tmp_path / "new.db").read_bytes() == before
    (tmp_path / "junk.db").write_text("not a database")
    with pytest.raises(UserError, match="is not a SQLite database"):
        check_storage(f"sqlite:///{tmp_path / 'junk.db'}", "exp")


def test_a_resume_cannot_add_a_study_the_search_started_without(tmp_path, capsys):
    from tuner.settings import SearchSettings

    (tmp_path / "exp").mkdir()
    SearchSettings(base={}, space={"head_lr": "loguniform[1e-06, 0.1]"}, metric="ce_ema", mode="min", grace_samples=1920,
                   chance_margin=0.39, max_samples=4800, num_trials=2, reduction_factor=2.0).save(tmp_path / "exp")  # fmt: skip
    before = sorted(tmp_path.rglob("*"))
    assert search_main(["--resume", "--name", "exp", "--storage-path", str(tmp_path), "--optuna-storage"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "continues 'exp' as it started, with no Optuna storage; drop --optuna-storage" in err
    assert sorted(tmp_path.rglob("*")) == before


# --- real searches ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ray
def test_the_study_reads_back_with_load_study_every_trial_its_state_and_its_curve(knob_search):
    code, exp, printed, url = knob_search
    assert code == 0, printed
    assert f"watch it: {dashboard_command(url)}" in printed
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).set_index("head_lr")
    study = optuna.load_study(study_name="knobs", storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and len(study.trials) == len(table) == 8
    every = INTERMEDIATE_EVERY_STEPS * BATCH
    for trial in study.trials:
        row = table.loc[trial.params["head_lr"]]
        # a trial that ran its budget is COMPLETE with its last value; one stopped early (stuck, cut) PRUNED
        expected = optuna.trial.TrialState.COMPLETE if row.end_reason == "completed" else optuna.trial.TrialState.PRUNED
        assert trial.state == expected, (trial.params, row.end_reason)
        assert trial.params["ce_only_steps"] == row.ce_only_steps
        steps = sorted(trial.intermediate_values)  # images seen, thinned: every 10 steps of the base config
        assert steps[0] == BATCH and steps[-1] == row.samples and len(steps) >= row.samples // every
        assert all(b - a >= every for a, b in zip(steps, steps[1:-1]))
        assert trial.intermediate_values[steps[-1]] == pytest.approx(row.final_ce_ema)
        if expected == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(row.final_ce_ema)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


@pytest.mark.slow
@pytest.mark.ray
def test_optuna_dashboard_serves_the_study_and_its_curves(knob_search, tmp_path):
    _, _, _, url = knob_search
    port = free_port()
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen([str(dashboard), url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        studies, deadline = None, time.monotonic() + 600  # a hang guard
        while studies is None:  # until the server answers: no fixed sleep
            assert server.poll() is None, f"optuna-dashboard exited: {server.stderr.read()}"
            assert time.monotonic() < deadline, "optuna-dashboard did not answer in 600 s"
            try:
                studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.2)
        (study,) = [s for s in studies if s["study_name"] == "knobs"]
        trials = get_json(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0")["trials"]
        assert len(trials) == 8 and all(len(t["intermediate_values"]) >= 2 for t in trials)  # the curves it draws
    finally:
        server.terminate()
        server.wait(timeout=30)


# A resumed search continues the same study: tests/tuner/test_interrupts.py's Ctrl-C test runs with --optuna-storage
