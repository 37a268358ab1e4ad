"""The function trainable: one Ray Tune trial = one `reid_core.train.train` run.

It lives in the package (Ray's workers import it by name; a trainable defined
in a script or test module cannot be imported by them).
"""

from __future__ import annotations

import math
from typing import Any

from ray import tune

from reid_core.config import TrainConfig
from reid_core.train import train


def trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> TrainConfig:
    """The trial's complete config: the search's base config plus the sampled values.

    ``base['max_steps']`` is the budget in optimizer steps *at accumulation 1*: a trial
    with ``grad_accum_steps=k`` trains for ``ceil(max_steps / k)`` steps, so every
    trial may see the same number of images and trials compare at equal compute.
    """
    cfg = TrainConfig.from_dict(sampled, base=TrainConfig.from_dict(base))
    steps = math.ceil(base["max_steps"] * TrainConfig.from_dict(base).grad_accum_steps / cfg.grad_accum_steps)
    return TrainConfig.from_dict({"max_steps": max(1, steps)}, base=cfg)


def train_trial(sampled: dict[str, Any], base: dict[str, Any]) -> None:
    """Run one trial, forwarding every optimizer step's metrics to ``ray.tune.report``."""
    cfg = trial_config(base, sampled)
    train(cfg, report=tune.report)
