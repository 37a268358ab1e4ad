"""Bad input to `python -m tuner.search`: one line, exit 2, no traceback, nothing written. No Ray needed:
every one of these is refused before Ray starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuner.search import main


def bad_space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return ["--space", str(path)]


def points(tmp_path, text):
    path = tmp_path / "points.json"
    path.write_text(text)
    return ["--points-to-evaluate", str(path)]


CASES = {
    "unknown space": (lambda t: ["--space", "defualt"], "unknown search space 'defualt'"),
    "key outside TrainConfig": (lambda t: bad_space(t, "head_lrr: {loguniform: [1.0e-6, 1.0e-1]}"), "did you mean 'head_lr'"),
    "malformed domain": (lambda t: bad_space(t, "head_lr: {loguniform: [1.0e-1, 1.0e-6]}"), "needs low < high"),
    "max_steps in the space": (lambda t: bad_space(t, "max_steps: {randint: [10, 20]}"), "max_steps is the budget"),
    "zero trials": (lambda t: ["--num-trials", "0"], "--num-trials is 0, but must be > 0"),
    "negative budget": (lambda t: ["--max-steps", "-5"], "--max-steps is -5, but must be > 0"),
    "grace past the budget": (lambda t: ["--grace-steps", "500", "--max-steps", "100"], "exceeds --max-steps"),
    "zero margin": (lambda t: ["--chance-margin", "0"], "--chance-margin is 0.0"),
    "zero cpus": (lambda t: ["--cpus-per-trial", "0"], "--cpus-per-trial is 0.0"),
    "unknown config key": (lambda t: ["--set", "head_lrr=1e-3"], "did you mean 'head_lr'"),
    "bad config value": (lambda t: ["--set", "batch_size=abc"], "must be an integer"),
    "missing data set": (lambda t: ["--data", str(t / "no-such-data")], "no-such-data' does not exist"),
    "unreachable cluster": (lambda t: ["--address", "127.0.0.1:1"], "cannot reach the Ray cluster"),
    "malformed address": (lambda t: ["--address", "head-node"], "is not HOST:PORT"),
    "resume without experiment": (lambda t: ["--resume", "--name", "nothing-here"], "holds no reid-tune experiment"),
    "point outside the space": (lambda t: points(t, '[{"batch_size": 8}]'), "the space does not search"),
    "malformed points": (lambda t: points(t, '{"head_lr": 1e-2}'), "must hold a list"),
    "missing token file": (lambda t: ["--auth-token-file", str(t / "token")], "--auth-token-file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    make_args, message = CASES[case]
    storage = tmp_path / "results"
    code = main([*make_args(tmp_path), "--storage-path", str(storage), "--name", "exp"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("python -m tuner.search: error: ")
    assert message in err
    assert not storage.exists()


def test_an_existing_experiment_is_not_overwritten(tmp_path, capsys):
    exp = tmp_path / "results" / "exp"
    exp.mkdir(parents=True)
    (exp / "results.csv").write_text("precious\n")
    assert main(["--storage-path", str(tmp_path / "results"), "--name", "exp"]) == 2
    assert "already exists; pass --resume" in capsys.readouterr().err
    assert (exp / "results.csv").read_text() == "precious\n"


@pytest.mark.slow  # a fresh interpreter
def test_real_command_line_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.search", "--space", "nope", "--storage-path", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # a hang guard
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "python -m tuner.search: error: unknown search space 'nope'; shipped: default, head_lr, or pass a .yaml path"
    ]


@pytest.mark.slow  # the pre-flight's two overfit runs
def test_a_space_whose_top_head_lr_is_1e_6_is_refused_in_seconds_naming_head_lr(tmp_path, capsys, monkeypatch):
    import time

    import tuner.search

    def driver_started(*args, **kwargs):  # the Ray driver (tuner.driver.run): must not be reached
        raise AssertionError("the search reached the Ray driver")

    monkeypatch.setattr(tuner.search, "run", driver_started)
    storage = tmp_path / "results"
    started = time.perf_counter()
    code = main([*bad_space(tmp_path, "head_lr: {loguniform: [1.0e-7, 1.0e-6]}"), "--storage-path", str(storage), "--name", "exp"])
    took = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "pre-flight: lr_too_low" in err and "head_lr 1e-06" in err and "head_lr 0.01 reached" in err
    assert took < 60  # the pre-flight's two overfit runs; measured ~10 s on this machine with 3 agents
    assert not storage.exists()  # refused before Ray started: nothing written
