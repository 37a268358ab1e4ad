"""Planted faults: build each broken setup, train briefly, and the diagnosis names that cause and only it.

Each run: the synthetic default (400 identities, chance 5.99), CE only, 100 optimizer steps,
one thread, a few seconds. The faults are planted on a real `Trainer` after it is built,
the way each bug happens in user code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

from reid_core.config import TrainConfig
from reid_core.diagnostics import CAUSES, DIAGNOSED_KEYS, HEALTHY_HEAD, configured_lrs, diagnose, stuck_cause
from reid_core.trainer import Trainer

STEPS = 100


def drop_head_from_optimizer(t: Trainer) -> None:
    head = {id(p) for p in t.model.classifier.parameters()}
    groups = [dict(g, params=[p for p in g["params"] if id(p) not in head]) for g in t.optimizer.param_groups]
    t.optimizer = torch.optim.AdamW([g for g in groups if g["params"]])


def freeze_head(t: Trainer) -> None:
    t.model.classifier.weight.requires_grad_(False)  # as if the features were detached before the head


def cosine_classifier(t: Trainer) -> None:
    m = t.model
    m.identity_logits = lambda f: F.linear(F.normalize(f, dim=-1), F.normalize(m.classifier.weight, dim=-1))


def shuffle_labels(t: Trainer) -> None:
    inner, gen = t.stream, torch.Generator().manual_seed(1)

    def misaligned():
        for images, labels, tokens in inner:
            yield images, labels[torch.randperm(len(labels), generator=gen)], tokens

    t.stream = misaligned()


def permute_ids(t: Trainer) -> None:  # an annotation join gone wrong: each training image keeps one wrong id
    t.data.labels = t.data.labels[torch.randperm(len(t.data.labels), generator=torch.Generator().manual_seed(1))]


def overflow_fp16(t: Trainer) -> None:
    # An fp16 loss scale with gradients that overflow at every step: GradScaler skips them all.
    t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    t.model.classifier.weight.register_hook(lambda g: g * float("inf"))


def blank_images(t: Trainer) -> None:  # a loader bug: every image the same grey (features identical)
    inner = t.stream
    t.stream = ((torch.full_like(images, 0.5), labels, tokens) for images, labels, tokens in inner)


def head_weight_decay(t: Trainer) -> None:  # the head's parameter group built with its own, huge weight decay
    group = next(g for g in t.optimizer.param_groups if any(p is t.model.classifier.weight for p in g["params"]))
    group["weight_decay"] = 500.0


CASES = {
    "lr_too_low": ({"head_lr": 1e-5}, None),
    "head_not_in_optimizer": ({}, drop_head_from_optimizer),
    "no_gradient": ({}, freeze_head),
    # Random init: on the shipped pretrained features an unscaled cosine classifier leaves chance anyway
    # (measured ce_ema 5.29 at step 100, below the Go line; its floor is log(1 + 399 e^-2) = 4.0), so the run is not stuck.
    "bounded_logits": ({"pretrained": None}, cosine_classifier),
    "labels_no_signal": ({}, shuffle_labels),
    # 50 identities (350 training images, 11 steps an epoch): memorised within 100 steps; unseen_ce measured at 50, 100
    "labels_memorised": ({"synthetic_identities": 50}, permute_ids),
    "amp_skipped_steps": ({}, overflow_fp16),
    # the head guard (reid_core.head_lr) fires on the runaway at head LR 30 and lowers it a millionfold, to 3e-5:
    # the head moves too little, but raising the LR is not the fix
    "guard_lowered_lr": ({"head_lr": 30.0, "head_guard": True, "head_guard_factor": 1e-6}, None),
    "features_collapsed": ({}, blank_images),
    "gradient_too_small": ({"grad_clip": 1e-9}, None),  # AdamW's eps swamps a gradient clipped to 1e-9
    "weight_decay_too_high": ({"head_lr": 1e-3}, head_weight_decay),
    "label_smoothing_too_high": ({"label_smoothing": 0.9}, None),  # the smoothed CE's floor: 5.71 > Go line 5.60
}
NEW_CAUSES = ("features_collapsed", "gradient_too_small", "weight_decay_too_high", "label_smoothing_too_high")


def run(overrides, plant, steps=STEPS):
    trainer = Trainer(TrainConfig(max_steps=steps, ce_only_steps=10 * steps, threads=1, **overrides))
    if plant is not None:
        plant(trainer)
    return [trainer.train_step() for _ in range(steps)]


def test_every_cause_has_a_planted_fault():
    assert set(CASES) == set(CAUSES)


@pytest.mark.parametrize("cause", list(CASES))
def test_planted_fault_is_named(cause):
    rows = run(*CASES[cause])
    last = rows[-1]
    if cause == "labels_memorised":  # the training CE falls below the Go line; on images it never trained on it does not
        assert last["ce_ema"] < last["chance_ce"] - 0.39 < last["unseen_ce"]
    else:
        assert last["ce_ema"] > last["chance_ce"] - 0.39, "the planted fault must leave CE at chance"
    found = diagnose(rows, **configured_lrs(TrainConfig(**CASES[cause][0]), DIAGNOSED_KEYS))
    assert found is not None and found.cause == cause, found.line() if found else None
    assert cause in found.line() and "fix:" in found.line()


def test_healthy_run_gets_no_stuck_cause():
    rows = run({"head_lr": 1e-2}, None, steps=150)
    assert rows[-1]["ce_ema"] < rows[-1]["chance_ce"] - 0.39  # crossed the Go line
    assert stuck_cause(rows, margin=0.39) is None


def test_the_same_small_set_with_its_own_ids_learns_on_unseen_images_and_gets_no_cause():
    rows = run({"synthetic_identities": 50}, None)
    last = rows[-1]
    assert last["unseen_ce"] < last["chance_ce"] - 0.39 and last["ce_ema"] < last["chance_ce"] - 0.39
    assert stuck_cause(rows, margin=0.39) is None


def test_a_memorising_run_below_the_go_line_gets_labels_memorised_through_stuck_cause():
    rows = run(*CASES["labels_memorised"])
    assert stuck_cause(rows, margin=0.39).cause == "labels_memorised"
    assert stuck_cause([{k: v for k, v in r.items() if k != "unseen_ce"} for r in rows], margin=0.39) is None  # no evidence


def test_a_stuck_run_gets_its_cause_through_stuck_cause():
    assert stuck_cause(run({"head_lr": 1e-6}, None, steps=30), margin=0.39).cause == "lr_too_low"


# --- faults planted otherwise than the thresholds were calibrated on --------------------------------------
# Calibration (reid_core/diagnostics.py): seed 0, tanh(logits), an unscaled cosine classifier, randperm-shuffled
# labels. Judged here: seed 3, clamp / softsign logits, labels rolled by one, a logit scale of 0.01.


def squash(fn):
    def plant(t: Trainer) -> None:
        inner = t.model.identity_logits
        t.model.identity_logits = lambda f: fn(inner(f))

    return plant


def roll_labels(t: Trainer) -> None:
    inner = t.stream
    t.stream = ((images, labels.roll(1), tokens) for images, labels, tokens in inner)


@pytest.mark.parametrize(
    "plant, expected",
    [
        (squash(lambda x: x.clamp(-1, 1)), "bounded_logits"),  # squashed logits: the head moves ~50x, not lr_too_low
        (squash(F.softsign), "bounded_logits"),
    ],
)
def test_logits_squashed_into_minus_one_one_are_bounded_not_lr_too_low(plant, expected):
    rows = run({"pretrained": None, "seed": 3}, plant)
    assert rows[-1]["ce_ema"] > rows[-1]["chance_ce"] - 0.39
    found = diagnose(rows, head_lr=1e-2)
    assert found.cause == expected, found.block()


def test_labels_rolled_by_one_carry_no_signal():
    found = diagnose(run({"seed": 3}, roll_labels), head_lr=1e-2)
    assert found.cause == "labels_no_signal", found.block()


def test_a_fault_no_cause_fits_is_unknown_with_the_evidence_against_each_and_the_checklist():
    rows = run({"seed": 3}, squash(lambda x: 0.01 * x), steps=60)  # a logit scale far too small: no cause of ours
    assert rows[-1]["ce_ema"] > rows[-1]["chance_ce"] - 0.39
    found = diagnose(rows, head_lr=1e-2)
    assert found.cause == "unknown", found.block()
    block = found.block()
    assert all(f"not {cause}:" in block for cause in CAUSES)  # the evidence against each known cause
    assert "after the BNNeck" in block and "no_grad" in block and "optimizer" in block and "labels" in block
    assert "head moved" in found.line() and len(block.splitlines()) <= 10  # one short block


def test_a_healthy_run_judged_too_early_is_not_blamed_on_its_labels_or_lr():
    rows = run({"head_lr": 7.8e-3, "seed": 4, "monitor_every": 1}, None, steps=9)  # moved > 5x, ce_ema still at chance (it lags)
    assert rows[-1]["head_weight_change"] >= 5 and rows[-1]["ce_ema"] > rows[-1]["chance_ce"] - 0.05
    assert diagnose(rows, head_lr=7.8e-3).cause == "unknown"


def test_evidence_quotes_the_configured_lrs_beside_the_applied_ones():
    rows = run({"head_lr": 1e-5, "seed": 3}, None, steps=40)  # max_steps=40: cosine decays to ~0 by the last step
    config = TrainConfig(head_lr=1e-5, backbone_lr=2e-5)
    found = stuck_cause(rows, margin=0.39, config=config)
    assert found.cause == "lr_too_low"
    assert "head_lr 1e-05" in found.evidence and "backbone_lr 2e-05" in found.evidence
    assert f"last {rows[-1]['head_lr_applied']:.2g}" in found.evidence  # the decayed one, named as applied
    plain = stuck_cause(rows, margin=0.39, config={"lr_head": 1e-5})  # a user's config without our keys
    assert "head_lr_applied peak" in plain.evidence and "head_lr 1e-05" not in plain.evidence


def test_a_stuck_head_is_shown_beside_the_healthy_reference_values():
    found = diagnose(run({"head_lr": 1e-6, "seed": 3}, None, steps=50), head_lr=1e-6)
    low, high = HEALTHY_HEAD[50]["head_weight_change"]
    assert f"head_weight_change {found.reference.split('head_weight_change ')[1].split(' ')[0]}" in found.block()
    assert f"(healthy {low:.3g}-{high:.3g})" in found.block() and "head_grad_norm" in found.block()
    assert "logit_std" in found.reference and "step 50" in found.reference


@pytest.mark.parametrize("head_lr", [3e-4, 1e-2])
def test_a_healthy_run_above_the_go_line_is_not_given_the_update_or_feature_causes(head_lr):
    rows = run({"head_lr": head_lr, "seed": 3}, None, steps=12 if head_lr > 1e-3 else 60)  # still above the Go line
    assert rows[-1]["ce_ema"] > rows[-1]["chance_ce"] - 0.39
    assert rows[-1]["feature_spread"] > 0.5 and 0.04 < rows[-1]["head_step_per_lr"] < 1
    assert diagnose(rows, head_lr=head_lr, label_smoothing=0.1).cause not in NEW_CAUSES


def test_the_new_causes_need_their_metrics_and_say_so_when_absent():
    rows = run({"grad_clip": 1e-9, "seed": 3}, None, steps=40)
    assert diagnose(rows).cause == "gradient_too_small"
    old = [{k: v for k, v in r.items() if k not in ("head_update", "head_step_per_lr", "feature_spread")} for r in rows]
    assert diagnose(old).cause == "lr_too_low"  # a loop reporting only the older metrics: the older verdict


def test_a_head_lr_a_schedule_zeroed_is_lr_too_low_however_far_the_head_moved_first():
    trainer = Trainer(TrainConfig(max_steps=60, ce_only_steps=600, threads=1, seed=3))
    rows = [trainer.train_step() for _ in range(8)]  # the head moves freely for 8 steps
    for group in trainer.optimizer.param_groups:
        group["base_lr"] = 0.0  # then a LambdaLR with an integer-division bug returns 0
    rows += [trainer.train_step() for _ in range(30)]
    assert rows[-1]["head_weight_change"] >= 5 and rows[-1]["ce_ema"] > rows[-1]["chance_ce"] - 0.39
    found = diagnose(rows, head_lr=1e-2)
    assert found.cause == "lr_too_low" and "applied LR has been 0 since step 9" in found.evidence, found.line()


def test_a_run_judged_before_its_second_head_measurement_is_not_taken_for_weight_decay():
    rows = run({"head_lr": 1e-5, "seed": 3}, None, steps=4)  # the monitor measured step 1 only (every 5 steps)
    assert {r["head_measured_step"] for r in rows} == {1}
    assert diagnose(rows, head_lr=1e-5).cause == "lr_too_low"


def test_a_stuck_run_without_head_metrics_is_unknown_saying_so_not_none():
    # a user's loop reporting the contract's minimum: no monitor, so no evidence and no guess
    rows = [{"step": s, "samples": 32 * s, "ce": 5.99, "ce_ema": 5.99, "chance_ce": 5.991} for s in range(1, 301)]
    found = stuck_cause(rows, margin=0.39)
    assert found.cause == "unknown" and "no head metrics were reported" in found.evidence
    assert "HeadMonitor" in found.line() and "fix: check that" in found.line()
    below = [dict(r, ce_ema=2.0) for r in rows]
    assert stuck_cause(below, margin=0.39) is None  # not stuck: no diagnosis at all
