"""The fix a stuck run's own evidence sizes (reid_core.repair), and when a search's stuck verdicts stop it
(reid_core.actions): pure functions on recorded rows, no training."""

from __future__ import annotations

import pytest

from reid_core.actions import Agreement, halt_count, halt_message
from reid_core.repair import TARGET_MOVED, fix_for


def rows(moved_at_end: float, steps: int = 60, lr: float = 1e-5, warmup: int = 0) -> list[dict]:
    """A held-back head: it moves in proportion to the LR applied (AdamW), here linearly to ``moved_at_end``."""
    applied = [lr * min(1.0, (s + 1) / warmup) if warmup else lr for s in range(steps)]
    total = sum(applied)
    out, so_far = [], 0.0
    for s in range(steps):
        so_far += applied[s]
        out.append({"step": s + 1, "head_lr_applied": applied[s], "head_weight_change": moved_at_end * so_far / total})
    return out


def test_a_head_that_moved_less_gets_a_larger_head_lr_and_the_fix_moves_it_to_the_target_by_the_window():
    little = fix_for("lr_too_low", rows(0.05), {"head_lr": 1e-5}, window_steps=300)
    more = fix_for("lr_too_low", rows(0.5), {"head_lr": 1e-5}, window_steps=300)
    assert little.changes["head_lr"] > 9 * more.changes["head_lr"]
    # movement is linear in the applied LR: the fix's LR over the window moves the head TARGET_MOVED x
    rate = 0.5 / (1e-5 * 60)
    assert more.changes["head_lr"] * 300 * rate == pytest.approx(TARGET_MOVED, rel=0.01)


def test_a_warm_up_is_read_from_the_applied_lr_not_taken_for_a_slow_head():
    flat = fix_for("lr_too_low", rows(0.2), {"head_lr": 1e-5}, window_steps=300)
    warm = fix_for("lr_too_low", rows(0.1, warmup=60), {"head_lr": 1e-5}, window_steps=300)  # half the LR-integral, half the movement
    assert warm.changes["head_lr"] == pytest.approx(flat.changes["head_lr"] * 2, rel=0.05)


def test_a_fix_above_the_space_says_so_and_one_inside_does_not():
    fix = fix_for("lr_too_low", rows(0.05), {"head_lr": 1e-5}, window_steps=300, bounds={"head_lr": (1e-6, 1e-4)})
    assert fix.within == {"head_lr": False} and "above the space's top 0.0001" in fix.note
    inside = fix_for("lr_too_low", rows(0.05), {"head_lr": 1e-5}, window_steps=300, bounds={"head_lr": (1e-6, 1e-1)})
    assert inside.within == {"head_lr": True} and inside.note == ""


def test_the_lowest_lr_that_learned_in_the_search_is_the_floor():
    fix = fix_for("lr_too_low", rows(0.5), {"head_lr": 1e-5}, window_steps=300, learned_lrs=[5e-3, 2e-2])
    assert fix.changes["head_lr"] == 5e-3 and "lowest head LR that learned" in fix.why


def test_config_fixes_and_causes_no_config_value_fixes():
    assert fix_for("weight_decay_too_high", [], {"weight_decay": 500.0}, 300).changes == {"weight_decay": 4e-5}
    assert fix_for("gradient_too_small", [], {"grad_clip": 1e-8}, 300).changes == {"grad_clip": 0.0}
    assert fix_for("gradient_too_small", [], {"grad_clip": 0.0}, 300) is None  # a loss scaled in code
    assert fix_for("label_smoothing_too_high", [], {"label_smoothing": 0.97}, 300).changes == {"label_smoothing": 0.1}
    for cause in ("labels_no_signal", "no_gradient", "bounded_logits", "unknown"):
        assert fix_for(cause, rows(10.0), {"head_lr": 1e-2}, 300) is None


def test_which_causes_stop_a_search_and_after_how_many_agreeing_trials():
    assert halt_count("no_gradient", ["head_lr"]) == 1 and halt_count("head_not_in_optimizer", ["head_lr"]) == 1
    assert halt_count("labels_no_signal", ["head_lr"]) == 2 and halt_count("features_collapsed", ["head_lr"]) == 2
    assert halt_count("label_smoothing_too_high", ["head_lr"]) == 1
    assert halt_count("label_smoothing_too_high", ["head_lr", "label_smoothing"]) is None  # the search may fix it
    for cause in ("lr_too_low", "weight_decay_too_high", "gradient_too_small", "unknown"):
        assert halt_count(cause, ["head_lr"]) is None


def test_two_different_trials_must_agree_and_a_trial_that_learned_means_the_wiring_works():
    agreement = Agreement(["head_lr"])
    assert not agreement.stuck("a", "labels_no_signal", "moved 38x", "check labels", {"head_lr": 0.01})
    assert not agreement.stuck("b", "lr_too_low", "moved 0.1x", "raise head_lr", {"head_lr": 1e-6})
    assert agreement.stuck("c", "labels_no_signal", "moved 40x", "check labels", {"head_lr": 0.02})
    assert agreement.decided == ("labels_no_signal", ["a", "c"], "moved 40x", "check labels")
    line = halt_message(*agreement.decided, agreement.searched)
    assert len(line.splitlines()) == 1 and "labels_no_signal" in line and "--keep-going" in line and "no value of head_lr" in line
    learned = Agreement(["head_lr"])
    learned.learned()
    assert not learned.stuck("a", "no_gradient", "grad 0", "look for detach", {"head_lr": 0.01})
