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
from reid_core.diagnostics import CAUSES, diagnose, stuck_cause
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


def overflow_fp16(t: Trainer) -> None:
    # An fp16 loss scale with gradients that overflow at every step: GradScaler skips them all.
    t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    t.model.classifier.weight.register_hook(lambda g: g * float("inf"))


CASES = {
    "lr_too_low": ({"head_lr": 1e-5}, None),
    "head_not_in_optimizer": ({}, drop_head_from_optimizer),
    "no_gradient": ({}, freeze_head),
    # Random init: on the shipped pretrained features an unscaled cosine classifier leaves chance anyway
    # (measured ce_ema 5.29 at step 100, below the Go line; its floor is log(1 + 399 e^-2) = 4.0), so the run is not stuck.
    "bounded_logits": ({"pretrained": None}, cosine_classifier),
    "labels_no_signal": ({}, shuffle_labels),
    "amp_skipped_steps": ({}, overflow_fp16),
}


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
    assert rows[-1]["ce_ema"] > rows[-1]["chance_ce"] - 0.39, "the planted fault must leave CE at chance"
    found = diagnose(rows)
    assert found is not None and found.cause == cause, found.line() if found else None
    assert cause in found.line() and "fix:" in found.line()


def test_healthy_run_gets_no_stuck_cause():
    rows = run({"head_lr": 1e-2}, None, steps=150)
    assert rows[-1]["ce_ema"] < rows[-1]["chance_ce"] - 0.39  # crossed the Go line
    assert stuck_cause(rows, margin=0.39) is None


def test_a_stuck_run_gets_its_cause_through_stuck_cause():
    assert stuck_cause(run({"head_lr": 1e-6}, None, steps=30), margin=0.39).cause == "lr_too_low"
