"""End-to-end searches on real Ray (CPU), made deterministic with points_to_evaluate."""

from __future__ import annotations

import json
import pandas as pd
import pytest

from reid_core.train import main as train_main
from tuner.diagnose import main as diagnose_main

pytestmark = pytest.mark.ray

from tests.tuner.conftest import BATCH, GRACE_STEPS, GO_LINE, MAX_STEPS, run_search


def test_search_exits_0_and_writes_one_results_row_per_trial(learner_and_stuck):
    code, exp, table = learner_and_stuck
    assert code == 0
    assert len(table) == 2
    assert {"trial_id", "head_lr", "end_reason", "steps", "samples", "final_ce_ema", "best_ce_ema", "go_samples", "wall_s", "sdm_start_step"} <= set(table.columns)


def test_head_lr_1e_6_is_stopped_at_chance_early_by_its_head_evidence_and_named(learner_and_stuck):
    _, _, table = learner_and_stuck
    stuck = table[table.head_lr == 1e-6].iloc[0]
    assert stuck.end_reason == "stuck_at_chance" and stuck.verdict == "early"
    assert stuck.stuck_cause == "lr_too_low"  # named from the diagnostics the trial reported
    assert stuck.samples < GRACE_STEPS * BATCH  # before the seed's window
    assert pd.isna(stuck.go_samples)


def test_verdict_window_stops_the_same_trial_within_one_report_of_the_grace_window(ray_session, tmp_path):
    code, exp = run_search(tmp_path, "window", [{"head_lr": 1e-6}], extra=["--verdict", "window"])
    stuck = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).iloc[0]
    assert code == 0 and stuck.end_reason == "stuck_at_chance" and stuck.verdict == "window"
    assert stuck.steps == GRACE_STEPS  # the first result past the window is the verdict, and the last


def test_head_lr_1e_2_completes_below_the_go_line(learner_and_stuck):
    _, _, table = learner_and_stuck
    learner = table[table.head_lr == 1e-2].iloc[0]
    assert learner.end_reason == "completed" and pd.isna(learner.stuck_cause)
    assert learner.steps == MAX_STEPS
    assert learner.final_ce_ema < GO_LINE
    assert learner.go_samples > 0


def test_best_config_is_the_learner_and_reruns_without_ray(learner_and_stuck, tmp_path):
    _, exp, _ = learner_and_stuck
    best = json.loads((exp / "best_config.json").read_text())
    assert best["config"]["head_lr"] == 1e-2
    assert best["end_reason"] == "completed"
    assert best["metrics"]["ce_ema"] < GO_LINE
    out = tmp_path / "rerun"
    assert train_main(["--config", str(exp / "best_config.json"), "--out", str(out), "--log-every", "60"]) == 0
    rerun = pd.read_csv(out / "metrics.csv")
    assert len(rerun) == MAX_STEPS and rerun.ce_ema.iloc[-1] < GO_LINE


def test_every_step_is_one_result_and_the_stuck_trial_keeps_none_past_its_verdict(learner_and_stuck):
    # Results reach the driver in batches (tuner.trainable.FastReporting): none may be lost or
    # repeated, and a trial stopped inside a batch keeps no result after the one judged.
    _, exp, table = learner_and_stuck
    for _, row in table.iterrows():
        lines = (exp / row.trial_dir / "result.json").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, row.steps + 1))
    stuck = table[table.head_lr == 1e-6].iloc[0]
    assert stuck.steps < GRACE_STEPS  # the early verdict's result is the last
    # One logger: result.json. Ray's progress.csv and TensorBoard events only with --tensorboard.
    assert not list(exp.glob("*/progress.csv")) and not list(exp.glob("*/events.out.tfevents*"))


def test_tensorboard_flag_writes_event_files(ray_session, tmp_path):
    extra = ["--max-steps", "20", "--grace-steps", "20", "--chance-margin", "0.02", "--tensorboard", "--quiet"]
    code, exp = run_search(tmp_path, "tb", [{"head_lr": 1e-2}], extra=extra)
    assert code == 0
    (events,) = exp.glob("*/events.out.tfevents*")
    assert events.stat().st_size > 1000


def test_curves_picture_is_written(learner_and_stuck):
    _, exp, _ = learner_and_stuck
    png = exp / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_when_every_trial_is_stuck_every_trial_is_stopped_at_chance(ray_session, tmp_path):
    # ASHA alone would promote the first trial to reach its rung and keep the best of the stuck.
    points = [{"head_lr": 1e-6}, {"head_lr": 2e-6}, {"head_lr": 4e-6}]
    code, exp = run_search(tmp_path, "all-stuck", points, extra=["--max-concurrent", "2"])
    table = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert code == 0
    assert list(table.end_reason) == ["stuck_at_chance"] * 3
    assert (table.samples <= GRACE_STEPS * BATCH + BATCH).all()


def test_trials_report_the_applied_lrs_under_the_fields_names(learner_and_stuck):
    _, exp, table = learner_and_stuck
    for trial_dir in table.trial_dir:
        first = json.loads((exp / trial_dir / "result.json").read_text().splitlines()[0])
        assert {"head_lr_applied", "backbone_lr_applied"} <= set(first)
        assert not {"lr_head", "lr_backbone"} & set(first)


def test_diagnose_on_the_stuck_trials_folder_gives_the_step_and_cause_the_search_recorded(learner_and_stuck, capsys):
    _, exp, table = learner_and_stuck
    stuck = table[table.head_lr == 1e-6].iloc[0]
    assert diagnose_main([str(exp / stuck.trial_dir)]) == 0
    said = capsys.readouterr().out
    assert f"stuck_at_chance at step {stuck.steps};" in said and f"cause: {stuck.stuck_cause}" in said
