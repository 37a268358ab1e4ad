"""Pure pieces of the trainable and the search, without Ray running."""

from __future__ import annotations

import math

import pytest

from reid_core.config import TrainConfig
from reid_core.job import ReIDJob
from tuner.trainable import carry_evaluation


def test_carry_evaluation_puts_the_latest_evaluation_in_every_result():
    seen = []
    report = carry_evaluation(lambda metrics, **kwargs: seen.append((metrics, kwargs)))
    report({"step": 1})
    report({"step": 2, "val_r1": 12.5, "val_map": 9.0}, checkpoint="c")
    report({"step": 3})
    assert math.isnan(seen[0][0]["val_r1"])  # NaN before the first evaluation: Ray needs the key
    assert seen[1][0]["val_r1"] == 12.5 and seen[1][1] == {"checkpoint": "c"}
    assert seen[2][0]["val_r1"] == 12.5 and seen[2][0]["val_map"] == 9.0 and seen[2][0]["step"] == 3


@pytest.mark.parametrize("accum, steps", [(1, 300), (2, 150), (4, 75), (8, 38)])
def test_trials_with_more_accumulation_take_fewer_steps_for_the_same_images(accum, steps):
    cfg = TrainConfig.from_dict(ReIDJob().trial_config(TrainConfig(max_steps=300).to_dict(), {"grad_accum_steps": accum, "head_lr": 1e-3}))
    assert cfg.max_steps == steps and cfg.head_lr == 1e-3
    assert abs(cfg.max_steps * cfg.images_per_step - 300 * 32) < cfg.images_per_step
