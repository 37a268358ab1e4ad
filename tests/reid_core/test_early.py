"""The early verdict (`reid_core.early`): stuck runs stopped long before the seed's window, learners never.

Real training on the embedded default (pretrained reid-tiny, 400 identities, CE only, batch 32), judged by the
search's own rule with its defaults: grace 300 steps, budget 450 steps, the early verdict on.
"""

from __future__ import annotations

import pytest

from reid_core.chance import EARLY, WINDOW, ChanceLevelRule, first_verdict, replay
from reid_core.config import TrainConfig
from reid_core.diagnostics import stuck_cause
from reid_core.early import Scope, scope
from reid_core.schema import STUCK
from reid_core.trainer import Trainer

GRACE_STEPS, BUDGET_STEPS, BATCH = 300, 450, 32


def train(steps: int, plant=None, **overrides) -> tuple[TrainConfig, list[dict]]:
    cfg = TrainConfig(max_steps=BUDGET_STEPS, ce_only_steps=10_000, batch_size=BATCH, threads=1, **overrides)
    trainer = Trainer(cfg)
    if plant is not None:
        plant(trainer)
    return cfg, [trainer.train_step() for _ in range(steps)]


def keywords(cfg: TrainConfig, verdict: str = EARLY) -> dict:
    return {"verdict": verdict, "budget_samples": BUDGET_STEPS * BATCH, "scope": scope(cfg.to_dict())}


def judged(cfg: TrainConfig, rows: list[dict], verdict: str = EARLY):
    return replay(rows, GRACE_STEPS * BATCH, **keywords(cfg, verdict))


def freeze_head(t: Trainer) -> None:
    t.model.classifier.weight.requires_grad_(False)


def test_a_head_lr_of_1e_6_is_stopped_by_step_60_as_lr_too_low_with_its_projection():
    cfg, rows = train(60, head_lr=1e-6)
    said, at, early = judged(cfg, rows)
    assert said == STUCK and at["step"] <= 60
    assert early.basis == "projection" and early.cause == "lr_too_low" and early.confidence > 1
    # the cause the search prints (stuck_cause on the rows up to the verdict) is the one the early verdict read
    assert stuck_cause(rows[: at["step"]], config=cfg).cause == "lr_too_low"
    assert "by the budget" in early.short and "lr_too_low" in early.line(GRACE_STEPS * BATCH)


def test_a_head_with_no_gradient_is_stopped_within_20_steps():
    cfg, rows = train(20, freeze_head)
    said, at, early = judged(cfg, rows)
    assert said == STUCK and at["step"] <= 20 and early.cause == "no_gradient" and early.basis == "wiring"


def test_the_window_verdict_waits_for_step_300_as_the_seed_did():
    cfg, rows = train(300, head_lr=1e-6)
    said, at = first_verdict(rows, GRACE_STEPS * BATCH, **keywords(cfg, WINDOW))
    assert said == STUCK and at["step"] == 300


@pytest.mark.slow
def test_an_edge_of_learnable_run_that_crosses_the_go_line_after_step_300_is_never_stopped():
    cfg, rows = train(BUDGET_STEPS, head_lr=8e-5)
    crossed = next(r["step"] for r in rows if r["ce_ema"] <= r["chance_ce"] - 0.39)
    assert crossed > 300  # it is at the edge: learning, slowly
    assert judged(cfg, rows)[0] is None


@pytest.mark.slow
def test_a_warm_up_longer_than_the_early_window_at_a_healthy_lr_is_not_stopped_early():
    cfg, rows = train(200, head_lr=3e-4, lr_warmup_steps=150)
    assert judged(cfg, rows)[0] is None


def test_a_run_meant_to_raise_its_head_lr_is_not_judged_on_its_lr_early():
    cfg = TrainConfig(head_lr_raise=10.0)
    assert scope(cfg.to_dict()).lr_fixed is False and scope(cfg.to_dict()).calibrated is True
    _, rows = train(60, head_lr=1e-6)
    rule = ChanceLevelRule(GRACE_STEPS * BATCH, budget_samples=BUDGET_STEPS * BATCH, scope=Scope(lr_fixed=False))
    assert all(rule(r) is None for r in rows)  # the raise decides first; the window is the backstop


def test_a_users_function_is_judged_early_only_on_exact_wiring_evidence():
    assert scope({"lr": 1e-3}, trainable=True).calibrated is False
    cfg, rows = train(60, head_lr=1e-6)
    rule = ChanceLevelRule(GRACE_STEPS * BATCH, budget_samples=BUDGET_STEPS * BATCH, scope=Scope(calibrated=False))
    assert all(rule(r) is None for r in rows)
    cfg, rows = train(20, freeze_head)
    said, at, early = replay(rows, GRACE_STEPS * BATCH, budget_samples=BUDGET_STEPS * BATCH, scope=Scope(calibrated=False))
    assert said == STUCK and early.cause == "no_gradient"


def test_a_head_group_at_lr_0_from_the_first_step_is_lr_too_low_not_head_not_in_optimizer():
    def zero_head_lr(t: Trainer) -> None:
        for group in t.optimizer.param_groups:
            if any(p is t.model.classifier.weight for p in group["params"]):
                group["base_lr"] = 0.0

    cfg, rows = train(30, zero_head_lr)
    assert all(r["head_lr_applied"] == 0.0 for r in rows)
    assert stuck_cause(rows, config=cfg).cause == "lr_too_low"


def test_a_curve_without_head_metrics_waits_for_the_window():
    cfg, rows = train(300, head_lr=1e-6)
    bare = [{k: r[k] for k in ("step", "samples", "ce", "ce_ema", "chance_ce")} for r in rows]
    said, at = first_verdict(bare, GRACE_STEPS * BATCH, **keywords(cfg))
    assert said == STUCK and at["step"] == 300


def test_a_slow_head_with_a_long_budget_is_not_stopped_on_the_spread_of_its_inits_logits():
    # head LR 2.1e-5 with a 2,400-step budget crosses the Go line near step 930 (benchmarks/early_stop.py, seed 0):
    # at step 20 it has moved 0.13x its norm, its logits are still its init's and spread slowly
    cfg, rows = train(40, head_lr=2.1e-5)
    said, _, _ = replay(rows, GRACE_STEPS * BATCH, verdict=EARLY, budget_samples=2400 * BATCH, scope=scope(cfg.to_dict()))
    assert said is None
