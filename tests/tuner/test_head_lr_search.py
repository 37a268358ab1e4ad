"""The guard and the progressive raise inside a search (reid_core.head_lr): searchable fields, events counted in
results.csv, and the chance-level rule not stopping a run for the flat curve that made its raise. One trial per
search: ASHA has no peer to cut it against, so only the chance-level rule can end it early."""

from __future__ import annotations

import pandas as pd

from reid_core.schema import COMPLETED, GUARD_FIRINGS, LR_RAISES
from tests.tuner.conftest import GO_LINE, run_search


def test_the_guard_fires_in_a_trial_and_results_csv_counts_it(ray_session, tmp_path):
    space = "head_lr: {loguniform: [1.0e-6, 100.0]}\n"
    code, exp = run_search(tmp_path, "guard", [{"head_lr": 30.0}], ["--set", "head_guard=true", "--skip-preflight"], space)
    row = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).iloc[0]
    assert code == 0 and row["end_reason"] == COMPLETED
    assert row[GUARD_FIRINGS] >= 1 and row[LR_RAISES] == 0
    assert row["final_ce_ema"] < GO_LINE, row["final_ce_ema"]


def test_a_raised_trial_is_judged_after_a_fresh_grace_window_and_ends_below_the_go_line(ray_session, tmp_path):
    # head LR 1e-5 sits at chance: without a raise the rule stops it at the 60-step grace window (stuck_at_chance);
    # raised every 30 steps (a searched field), it gets a new window at each raise and learns
    space = "head_lr: {loguniform: [1.0e-6, 1.0e-1]}\nhead_lr_raise: {choice: [1.0, 10.0]}\n"
    extra = ["--set", "head_lr_watch_steps=30", "head_lr_raise_cap=1e-2", "--skip-preflight"]
    code, exp = run_search(tmp_path, "raise", [{"head_lr": 1e-5, "head_lr_raise": 10.0}], extra, space)
    row = pd.read_csv(exp / "results.csv", dtype={"trial_id": str}).iloc[0]
    assert code == 0 and row["end_reason"] == COMPLETED, row["end_reason"]
    assert row[LR_RAISES] >= 2 and row[GUARD_FIRINGS] == 0
    assert row["final_ce_ema"] < GO_LINE, row["final_ce_ema"]
