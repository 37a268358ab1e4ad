"""``--preflight-on trial``: the pre-flight as one Ray task on what one trial holds (issue 27: a ViT-B/16 pre-flight
on a driver without a GPU takes most of an hour). Real Ray (the shared session), the tiny model."""

from __future__ import annotations

from tests.tuner.conftest import sequential_search_args
from tuner.search import main as search_main

POINTS = [{"head_lr": 1e-2}]


def test_the_preflight_runs_on_a_trials_resources_before_the_first_trial(ray_session, tmp_path, capsys):
    """``--preflight-on trial`` (auto on a driver without a GPU whose trials get one): one Ray task, its lines said."""
    args, storage = sequential_search_args(tmp_path, "there", POINTS)
    args = [a for a in args if a != "--skip-preflight"]
    assert search_main([*args, "--max-steps", "20", "--grace-steps", "10", "--preflight-on", "trial"]) == 0
    out = capsys.readouterr().out
    where = out.index("pre-flight on a trial's resources (1 CPU, 0 GPU)")
    assert where < out.index("pre-flight passed in") < out.index("searching")


def test_a_preflight_failing_on_a_trial_is_one_line_and_nothing_written(ray_session, tmp_path, capsys):
    args, storage = sequential_search_args(tmp_path, "fails", POINTS)
    args = [a for a in args if a != "--skip-preflight"]
    code = search_main([*args, "--max-steps", "20", "--grace-steps", "10", "--preflight-on", "trial", "--set", "label_smoothing=0.9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("python -m tuner.search: error: pre-flight: label_smoothing_too_high: label_smoothing 0.9 puts the CE floor")
    assert not (storage / "fails").exists()
