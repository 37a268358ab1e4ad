"""LR schedules (``head_lr_schedule``, ``backbone_lr_schedule``) and a checkpoint restored under another LR.

What a ``--scheduler pbt`` search relies on, without Ray: a checkpoint restored under a config with a
perturbed ``head_lr`` trains at that LR from the next step (the optimizer state it loads carries the old
one), and the plain job following the exported schedule retraces that lineage exactly.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from reid_core.config import ConfigError, TrainConfig
from reid_core.schedule import lr_factor, scheduled_value
from reid_core.train import train

CFG = TrainConfig(synthetic_identities=40, batch_size=16, max_steps=20, lr_warmup_steps=4, ce_only_steps=6, sdm_ramp_steps=4, threads=1)


@pytest.mark.parametrize(
    "step, expected",
    [(0, 1e-2), (4, 1e-2), (5, 2e-2), (9, 2e-2), (10, 1e-3), (99, 1e-3)],
)
def test_scheduled_value_is_the_last_entry_at_or_before_the_step(step, expected):
    assert scheduled_value([[5, 2e-2], [10, 1e-3]], step, 1e-2) == expected


def test_no_schedule_is_the_default():
    assert scheduled_value(None, 7, 3e-4) == 3e-4


@pytest.mark.parametrize(
    "value",
    ["[[10, 1e-3], [5, 1e-3]]", "[[5, 1e-3], [5, 2e-3]]", "[[-1, 1e-3]]", "[[5, 0]]", "[[5, nan]]", "[5, 1e-3]", "[[5]]", "[[5.5, 1e-3]]", "soon"],
)
def test_a_bad_head_lr_schedule_is_one_error_naming_the_field(value):
    with pytest.raises(ConfigError, match="head_lr_schedule"):
        TrainConfig().with_overrides([f"head_lr_schedule={value}"])


def test_a_schedule_round_trips_through_json_and_yaml_text():
    cfg = TrainConfig().with_overrides(["head_lr_schedule=[[300, 2e-2], [400, '1e-3']]", "backbone_lr_schedule=[[0, 0]]"])
    assert cfg.head_lr_schedule == ((300, 0.02), (400, 0.001))
    assert cfg.to_dict()["head_lr_schedule"] == [[300, 0.02], [400, 0.001]]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def _head_lr(cfg: TrainConfig, step: int) -> float:
    """The head LR the optimizer should apply at 1-based ``step``: the schedule's base LR x warm-up/cosine."""
    base = scheduled_value(cfg.head_lr_schedule, step - 1, cfg.head_lr)
    return base * lr_factor(step - 1, cfg.lr_warmup_steps, cfg.max_steps)


def test_the_plain_job_applies_the_schedule_times_the_warm_up_and_cosine():
    cfg = TrainConfig.from_dict({"head_lr_schedule": [[5, 2e-2], [12, 1e-3]], "backbone_lr_schedule": [[8, 3e-5]]}, base=CFG)
    rows: list[dict] = []
    train(cfg, report=rows.append)
    for row in rows:
        assert row["head_lr_applied"] == pytest.approx(_head_lr(cfg, row["step"]), rel=1e-12), row["step"]
        backbone = (3e-5 if row["step"] > 8 else CFG.backbone_lr) * lr_factor(row["step"] - 1, cfg.lr_warmup_steps, cfg.max_steps)
        assert row["backbone_lr_applied"] == pytest.approx(backbone, rel=1e-12)
    assert rows[5]["head_lr_applied"] > rows[4]["head_lr_applied"]  # the raise at step 5 shows at step 6


def _checkpoint_at(cfg: TrainConfig, step: int) -> dict:
    saved: dict = {}

    def checkpoint(metrics, state):
        if metrics["step"] == step:
            buffer = io.BytesIO()
            torch.save(state, buffer)  # what a trial writes
            saved["bytes"] = buffer.getvalue()

    train(TrainConfig.from_dict({"max_steps": cfg.max_steps}, base=cfg), checkpoint=checkpoint, checkpoint_every=1)
    return torch.load(io.BytesIO(saved["bytes"]), weights_only=True)


def test_a_checkpoint_restored_under_a_new_head_lr_trains_at_the_new_lr():
    # PBT's exploit: trial A's checkpoint (head LR 1e-2) continues under a config with head_lr 4e-2. The loaded
    # optimizer state carries 1e-2; the applied LR must be the new config's, times the schedule factor.
    state = _checkpoint_at(CFG, 8)
    perturbed = TrainConfig.from_dict({"head_lr": 4e-2}, base=CFG)
    rows: list[dict] = []
    train(perturbed, report=rows.append, resume=state)
    assert rows[0]["step"] == 9
    for row in rows:
        expected = 4e-2 * lr_factor(row["step"] - 1, CFG.lr_warmup_steps, CFG.max_steps)
        assert row["head_lr_applied"] == pytest.approx(expected, rel=1e-12), row["step"]
        assert row["backbone_lr_applied"] == pytest.approx(CFG.backbone_lr * lr_factor(row["step"] - 1, 4, 20), rel=1e-12)


def test_a_lineage_of_checkpoints_under_changing_lrs_is_the_plain_job_with_its_schedule():
    # Two exploits: 1e-2 until step 6, then 3e-2 (from that checkpoint), then 5e-3 from step 13. The plain
    # job following head_lr_schedule [[6, 3e-2], [13, 5e-3]] from scratch must retrace it exactly (CPU).
    first = _checkpoint_at(CFG, 6)
    second_cfg = TrainConfig.from_dict({"head_lr": 3e-2}, base=CFG)
    saved: dict = {}
    middle: list[dict] = []

    def keep(metrics, state):
        middle.append(metrics)
        if metrics["step"] == 13:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            saved["bytes"] = buffer.getvalue()

    train(second_cfg, resume=first, checkpoint=keep, checkpoint_every=1)
    last: list[dict] = []
    train(TrainConfig.from_dict({"head_lr": 5e-3}, base=CFG), report=last.append, resume=torch.load(io.BytesIO(saved["bytes"]), weights_only=True))

    rerun: list[dict] = []
    train(TrainConfig.from_dict({"head_lr_schedule": [[6, 3e-2], [13, 5e-3]]}, base=CFG), report=rerun.append)
    lineage = {row["step"]: row for row in [*middle[:7], *last]}  # steps 7..13 from the middle trial, 14..20 from the last
    assert sorted(lineage) == list(range(7, 21))
    for row in rerun[6:]:
        for key in ("ce", "ce_ema", "head_lr_applied", "head_weight_norm"):
            assert row[key] == lineage[row["step"]][key], (row["step"], key)
    assert all(math.isfinite(r["ce"]) for r in rerun)


def test_a_run_with_a_schedule_resumed_from_a_checkpoint_keeps_the_scheduled_lr():
    # A retry of a trial (or of the re-run) past a schedule entry: the head trains at the scheduled LR, not head_lr.
    cfg = TrainConfig.from_dict({"head_lr_schedule": [[5, 3e-2]]}, base=CFG)
    straight: list[dict] = []
    train(cfg, report=straight.append)
    resumed: list[dict] = []
    train(cfg, report=resumed.append, resume=_checkpoint_at(cfg, 8))
    assert [r["step"] for r in resumed] == list(range(9, 21))
    for a, b in zip(straight[8:], resumed):
        assert (a["ce"], a["head_lr_applied"]) == (b["ce"], b["head_lr_applied"]), a["step"]
