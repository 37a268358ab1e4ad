"""A run resumed from a checkpoint continues the same curve: same data position, RNG, optimizer moments."""

from __future__ import annotations

import io

import pytest
import torch

from reid_core.config import TrainConfig
from reid_core.train import train

pytestmark = pytest.mark.slow  # three short runs, ~10 s

CFG = TrainConfig(synthetic_identities=40, batch_size=16, grad_accum_steps=2, max_steps=24, ce_only_steps=6, sdm_ramp_steps=4, threads=1)


def test_resumed_run_reproduces_the_uninterrupted_curve():
    straight: list[dict] = []
    train(CFG, report=straight.append)

    saved: dict = {}
    first: list[dict] = []

    def checkpoint(metrics, state):
        first.append(metrics)
        if metrics["step"] == 10:
            buffer = io.BytesIO()
            torch.save(state, buffer)  # the bytes a trial writes
            saved["bytes"] = buffer.getvalue()

    train(CFG, report=first.append, checkpoint=checkpoint, checkpoint_every=5)
    state = torch.load(io.BytesIO(saved["bytes"]), weights_only=True)  # loads without unpickling code
    assert state["step"] == 10

    resumed: list[dict] = []
    train(CFG, report=resumed.append, resume=state)

    assert [m["step"] for m in resumed] == list(range(11, 25))  # no gap, no repeated step
    for a, b in zip(straight[10:], resumed):
        for key in ("ce", "ce_ema", "sdm", "loss", "head_weight_norm", "head_weight_change", "head_lr_applied"):
            assert a[key] == b[key], (a["step"], key)
    assert [m["step"] for m in first] == list(range(1, 25))  # one call per step, checkpoint or not
