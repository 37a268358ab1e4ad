"""Plain runs on a CUHK-PEDES-layout set whose training ids are permuted among its images once (an annotation join
gone wrong): the run memorises its images, ends stuck_at_chance with cause labels_memorised, and the plain job,
``reid-tune diagnose`` and the replay (`reid_core.chance.first_verdict`) say so for the same rows. The same set with
its own ids learns and gets no verdict."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from reid_core.chance import EARLY, replay
from reid_core.diagnostics import stuck_cause
from reid_core.early import scope
from reid_core.train import main as train_main
from tests.reid_core.tiny_datasets import write_cuhk_people
from tuner.diagnose import main as diagnose_main

pytestmark = pytest.mark.slow  # ~10 s a run

# 40 identities x 4 images (one each held out: 120 to train on, 7 steps an epoch at batch 16), chance log(40) = 3.69
MAX_STEPS, GRACE_STEPS, BATCH = 150, 100, 16
ARGS = ["--max-steps", str(MAX_STEPS), "--grace-steps", str(GRACE_STEPS), "--log-every", "60",
        "--set", f"batch_size={BATCH}", "ce_only_steps=1000"]  # fmt: skip


def plain_run(tmp_path, permuted: bool, *extra: str):
    data = write_cuhk_people(tmp_path / "data", permuted=permuted).parent
    out = tmp_path / "run"
    code = train_main(["--data", str(data), "--out", str(out), *ARGS, *extra])
    return code, out, json.loads((out / "summary.json").read_text()), pd.read_csv(out / "metrics.csv")


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    return plain_run(tmp_path_factory.mktemp("permuted"), True, "--stop-when-stuck")


def test_permuted_ids_end_stuck_at_chance_as_labels_memorised_before_the_window(memorised, capsys):
    code, out, summary, metrics = memorised
    assert code == 1 and summary["end_reason"] == "stuck_at_chance" and summary["stuck_cause"] == "labels_memorised"
    last = metrics.iloc[-1]
    line = last.chance_ce - 0.39
    assert last.ce_ema < line < last.unseen_ce  # the training CE crossed the Go line; on held-out images it did not
    assert summary["chance_verdict_basis"] == "early" and summary["chance_verdict_step"] < GRACE_STEPS
    assert "labels_memorised" in summary["early_verdict"]


def test_the_diagnose_command_and_the_replay_say_the_same_for_the_same_rows(memorised, capsys):
    _, out, summary, metrics = memorised
    assert diagnose_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"stuck_at_chance at step {summary['chance_verdict_step']}" in printed and "cause: labels_memorised" in printed
    rows = metrics.to_dict("records")
    config = json.loads((out / "config.json").read_text())
    said, at, early = replay(
        rows, GRACE_STEPS * BATCH, 0.39, verdict=EARLY, budget_samples=MAX_STEPS * BATCH, scope=scope(config)
    )
    assert (said, at["step"], early.cause) == ("stuck_at_chance", summary["chance_verdict_step"], "labels_memorised")
    assert stuck_cause(rows, 0.39, config).cause == "labels_memorised"


def test_the_window_alone_also_stops_it_as_labels_memorised(tmp_path):
    code, _, summary, _ = plain_run(tmp_path, True, "--stop-when-stuck", "--verdict", "window")
    assert code == 1 and summary["stuck_cause"] == "labels_memorised"
    assert summary["chance_verdict_basis"] == "window" and summary["chance_verdict_step"] == GRACE_STEPS


def test_the_same_set_with_its_own_ids_learns_and_gets_no_verdict(tmp_path):
    code, out, summary, metrics = plain_run(tmp_path, False, "--stop-when-stuck")
    assert code == 0 and summary["end_reason"] == "completed" and summary["chance_verdict"] is None
    last = metrics.iloc[-1]
    assert last.unseen_ce < last.chance_ce - 0.39 and last.ce_ema < last.chance_ce - 0.39
    assert stuck_cause(metrics.to_dict("records"), 0.39) is None
