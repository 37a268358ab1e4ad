"""The function trainable: one Ray Tune trial = one `reid_core.train.train` run.

It lives in the package (Ray's workers import it by name; a trainable defined
in a script or test module cannot be imported by them).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from ray import tune

from reid_core.config import TrainConfig
from reid_core.train import EVAL_METRICS, train


def trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> TrainConfig:
    """The trial's complete config: the search's base config plus the sampled values.

    ``base['max_steps']`` is the budget in optimizer steps *at accumulation 1*: a trial
    with ``grad_accum_steps=k`` trains for ``ceil(max_steps / k)`` steps, so every
    trial may see the same number of images and trials compare at equal compute.
    """
    cfg = TrainConfig.from_dict(sampled, base=TrainConfig.from_dict(base))
    steps = math.ceil(base["max_steps"] * TrainConfig.from_dict(base).grad_accum_steps / cfg.grad_accum_steps)
    return TrainConfig.from_dict({"max_steps": max(1, steps)}, base=cfg)


def train_trial(
    sampled: dict[str, Any], base: dict[str, Any], metric: str = "ce_ema", eval_at_samples: Sequence[float] = ()
) -> None:
    """Run one trial, forwarding every optimizer step's metrics to ``ray.tune.report``.

    ``eval_at_samples``: extra evaluations (the ASHA rungs, when the search optimises a retrieval metric).
    """
    cfg = trial_config(base, sampled)
    report = carry_evaluation(tune.report) if metric in EVAL_METRICS else tune.report
    train(cfg, report=report, eval_at_samples=eval_at_samples)


def carry_evaluation(report: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Wrap ``report`` so that every result carries the latest evaluation (NaN before the first).

    Ray requires the search metric in every result, but retrieval is evaluated only now and
    then; ASHA reads it at its rungs, where the trial has just evaluated.
    """
    latest = {key: math.nan for key in EVAL_METRICS}

    def forward(metrics: dict[str, Any]) -> None:
        latest.update({key: metrics[key] for key in EVAL_METRICS if key in metrics})
        report({**metrics, **latest})

    return forward
