"""The LR schedule, the SDM weight ramp and the CE EMA, called with plain numbers."""

from __future__ import annotations

import math

import pytest

from reid_core.schedule import ema, lr_factor, sdm_weight_at


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.1),  # linear warm-up over 10 steps: the first step already trains, at 1/10
        (1, 0.2),
        (4, 0.5),
        (9, 1.0),  # last warm-up step reaches the base LR
        (10, 1.0),  # cosine starts at the top
        (55, 0.5),  # half way through the 90 decay steps
        (100, 0.0),  # the end of the run: decayed to 0
        (150, 0.0),  # and stays there past the end
    ],
)
def test_lr_factor_warmup_then_cosine(step: int, expected: float):
    assert lr_factor(step, lr_warmup_steps=10, total_steps=100) == pytest.approx(expected, abs=1e-12)


def test_lr_factor_cosine_matches_formula():
    warmup, total = 10, 300
    for step in range(warmup, total):
        progress = (step - warmup) / (total - warmup)
        assert lr_factor(step, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * progress)))


def test_lr_factor_never_increases_after_warmup_and_stays_positive_while_training():
    factors = [lr_factor(s, 10, 300) for s in range(300)]
    assert all(b <= a for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] > 0  # the last optimizer step (299) still moves the weights


def test_lr_factor_without_warmup_starts_at_full_lr():
    assert lr_factor(0, lr_warmup_steps=0, total_steps=100) == 1.0


def test_lr_factor_warmup_longer_than_run_holds_at_full_lr():
    assert lr_factor(19, lr_warmup_steps=20, total_steps=10) == 1.0
    assert lr_factor(25, lr_warmup_steps=20, total_steps=10) == 1.0


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (49, 0.0),  # the whole CE-only warm-up: SDM off
        (50, 0.02),  # first SDM step: 1/50 of the target
        (74, 0.5),
        (99, 1.0),  # ramp complete
        (500, 1.0),
    ],
)
def test_sdm_weight_zero_during_warmup_then_linear_ramp(step: int, expected: float):
    assert sdm_weight_at(step, ce_only_steps=50, ramp_steps=50, target=1.0) == pytest.approx(expected)


def test_sdm_weight_ramp_reaches_the_target_weight():
    assert sdm_weight_at(200, ce_only_steps=50, ramp_steps=50, target=0.3) == pytest.approx(0.3)


def test_sdm_weight_without_ramp_jumps_to_target_after_warmup():
    assert sdm_weight_at(9, ce_only_steps=10, ramp_steps=0, target=2.0) == 0.0
    assert sdm_weight_at(10, ce_only_steps=10, ramp_steps=0, target=2.0) == 2.0


def test_sdm_weight_without_warmup_is_on_from_the_first_step():
    assert sdm_weight_at(0, ce_only_steps=0, ramp_steps=0, target=1.0) == 1.0


def test_ema_starts_at_first_value_then_smooths():
    assert ema(None, 6.0, beta=0.95) == 6.0  # no bias towards 0 at the start
    assert ema(6.0, 4.0, beta=0.95) == pytest.approx(0.95 * 6.0 + 0.05 * 4.0)
    assert ema(6.0, 4.0, beta=0.0) == 4.0  # beta 0 = no smoothing
