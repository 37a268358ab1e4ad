"""The chance-level rule and the diagnosis on recorded rows of a memorising run: the training CE falls below the Go line,
the CE on held-out images of the same identities (``unseen_ce``) stays at chance (`reid_core.causes.LABELS_MEMORISED`)."""

from __future__ import annotations

import math
import pickle

import pytest

from reid_core.causes import MEMORISED_GAP, memorising
from reid_core.chance import EARLY, WINDOW, ChanceLevelRule, first_verdict, replay
from reid_core.diagnostics import diagnose, stuck_cause
from reid_core.early import Scope
from reid_core.evidence import unseen_trace
from reid_core.schema import STUCK

CHANCE = math.log(400)  # 5.99
LINE = CHANCE - 0.39  # the Go line, 5.60
BATCH, GRACE_STEPS, EVERY = 32, 300, 50


def rows(ce_ema_at, unseen_at, steps: int = 450, every: int = EVERY) -> list[dict]:
    """A run's rows: ``ce_ema_at(step)``, ``unseen_ce`` measured every ``every`` steps (NaN before the first), and the
    head metrics of a head that moves freely (so no cause before labels_memorised in the walk fits)."""
    out, unseen = [], math.nan
    for step in range(1, steps + 1):
        if step % every == 0:
            unseen = unseen_at(step)
        out.append(
            {
                "step": step, "samples": step * BATCH, "ce": ce_ema_at(step), "ce_ema": ce_ema_at(step), "loss": ce_ema_at(step),
                "chance_ce": CHANCE, "unseen_ce": unseen, "head_grad_norm": 2.0, "head_weight_norm": 0.1 * (1 + step / 10),
                "head_weight_change": step / 10, "logit_std": min(1.5, 0.01 * step), "head_lr_applied": 1e-2,
                "head_update": 0.01, "head_step_per_lr": 0.2, "feature_spread": 0.5, "head_measured_step": step,
                "skipped_steps": 0, "loss_scale": 1.0,
            }
        )  # fmt: skip
    return out


def falling(step: int) -> float:  # the training CE: chance until step 100, then down 1 nat every 100 steps
    return CHANCE - max(0, step - 100) / 100


# unseen_ce above chance and creeping up: confidently wrong on new images (each measurement its own value, as in a run)
MEMORISED = rows(falling, lambda step: CHANCE + 0.2 + step / 10_000)
LEARNING = rows(falling, lambda step: falling(step) + 0.1)  # unseen_ce follows the training CE down
NOT_REPORTED = [{k: v for k, v in r.items() if k != "unseen_ce"} for r in MEMORISED]


def rule(verdict: str = WINDOW) -> ChanceLevelRule:
    return ChanceLevelRule(GRACE_STEPS * BATCH, 0.39, verdict=verdict, budget_samples=450 * BATCH, scope=Scope())


def test_the_memorisation_test_reads_the_gap_now_and_at_the_measurement_and_a_chance_never_left():
    assert memorising(4.0, 6.2, 6.1, 5.0, LINE)
    assert not memorising(4.0, 6.2, 5.5, 5.0, LINE)  # unseen_ce was below the Go line once: something carried over
    assert not memorising(5.55, 6.0, 5.9, 5.0, LINE) and 6.0 - 5.55 < MEMORISED_GAP  # a gap under MEMORISED_GAP
    assert not memorising(5.8, 7.5, 7.0, 5.8, LINE)  # far below unseen_ce, but the training CE never fell (noise images)
    assert not memorising(4.0, 6.2, 6.1, 6.0, LINE)  # measured when ce_ema was at chance too: stale, not a gap
    assert not memorising(4.0, math.nan, math.nan, math.nan, LINE)  # not reported


def test_the_trace_reads_ce_ema_where_the_current_measurement_first_appeared():
    ce_emas = [6.0, 5.9, 5.5, 5.0, 4.5]
    assert unseen_trace(ce_emas, [math.nan, 6.1, 6.1, 6.3, 6.3]) == (6.3, 6.1, 5.0)
    assert all(math.isnan(x) for x in unseen_trace(ce_emas, [None] * 5))


def test_a_memorising_run_is_stopped_at_the_window_though_its_ce_ema_is_below_the_go_line():
    verdict, row = first_verdict(MEMORISED, GRACE_STEPS * BATCH, 0.39, verdict=WINDOW)
    assert verdict == STUCK and row["step"] == GRACE_STEPS and row["ce_ema"] < LINE  # 3.99 at step 300
    assert stuck_cause(MEMORISED[:GRACE_STEPS], margin=0.39).cause == "labels_memorised"
    assert "unseen_ce 6.221 on held-out images" in diagnose(MEMORISED[:GRACE_STEPS]).evidence


def test_a_learning_run_and_a_run_without_unseen_ce_are_not_stopped():
    for curve in (LEARNING, NOT_REPORTED):
        assert first_verdict(curve, GRACE_STEPS * BATCH, 0.39, verdict=WINDOW) == (None, None)
        assert stuck_cause(curve, margin=0.39) is None


def test_the_early_verdict_names_it_before_the_window_once_the_gap_is_measured():
    verdict, row, early = replay(MEMORISED, GRACE_STEPS * BATCH, 0.39, verdict=EARLY, budget_samples=450 * BATCH, scope=Scope())
    # the first measurement with ce_ema below the Go line and unseen_ce - 0.5: step 150 (ce_ema 5.49 against 6.21)
    assert verdict == STUCK and early is not None and early.cause == "labels_memorised" and row["step"] == 150
    assert first_verdict(LEARNING, GRACE_STEPS * BATCH, 0.39, verdict=EARLY, budget_samples=450 * BATCH) == (None, None)


def test_an_uncalibrated_run_waits_for_the_window():
    kept = replay(MEMORISED, GRACE_STEPS * BATCH, 0.39, verdict=EARLY, budget_samples=450 * BATCH, scope=Scope(calibrated=False))
    assert kept[0] == STUCK and kept[1]["step"] == GRACE_STEPS and kept[2] is None


def test_a_stale_measurement_taken_at_chance_is_no_gap():
    # unseen_ce measured once, at step 50 while ce_ema was at chance, never again: ce_ema falling since is no evidence
    stale = rows(falling, lambda step: CHANCE + 0.2, every=10_000)
    for r in stale[49:]:
        r["unseen_ce"] = CHANCE + 0.2
    assert first_verdict(stale, GRACE_STEPS * BATCH, 0.39, verdict=WINDOW) == (None, None)


@pytest.mark.parametrize("cut", [250, 320])
def test_the_rule_survives_a_pickle_and_one_pickled_before_unseen_ce_existed(cut):
    live = rule()
    for r in MEMORISED[:cut]:
        live(r)
    again = pickle.loads(pickle.dumps(live))
    old = pickle.loads(pickle.dumps(live))
    del old.__dict__["_unseen"]  # as a rule pickled by an earlier version unpickles: the class default, None
    firsts = [next((r["step"] for r in MEMORISED[cut:] if judge(r) == STUCK), None) for judge in (again, old)]
    expected = GRACE_STEPS if cut < GRACE_STEPS else cut + 1  # past the window: at the next result
    assert firsts == [expected, expected]


def test_a_run_above_the_go_line_whose_unseen_ce_is_below_it_is_learning_not_stuck():
    # training CE flat just above the line (augmentation noise, an LR decayed to 0), held-out CE below it
    hovering = rows(lambda step: LINE + 0.03, lambda step: LINE - 0.2 - step / 10_000)
    assert first_verdict(hovering, GRACE_STEPS * BATCH, 0.39, verdict=WINDOW) == (None, None)
    assert first_verdict(hovering, GRACE_STEPS * BATCH, 0.39, verdict=EARLY, budget_samples=450 * BATCH) == (None, None)
    without = [{k: v for k, v in r.items() if k != "unseen_ce"} for r in hovering]
    assert first_verdict(without, GRACE_STEPS * BATCH, 0.39, verdict=WINDOW)[0] == STUCK  # the training CE alone: flat
