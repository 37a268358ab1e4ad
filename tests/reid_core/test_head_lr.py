"""The run's own head-LR changes (reid_core.head_lr): the guard (the seed's 自动回退) and the progressive raise,
on the embedded default, as the plain job and a resumed run show them."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from reid_core.chance import ChanceLevelRule, go_line
from reid_core.config import TrainConfig
from reid_core.head_lr import RAISE as RAISED, HeadLRChanges
from reid_core.schema import GUARD_FIRINGS, LR_RAISES, STUCK
from reid_core.train import main
from reid_core.trainer import Trainer

RAISE = {"head_lr_raise": 10.0, "head_lr_watch_steps": 50, "head_lr_raise_cap": 1e-2}  # the README's recipe
# a head LR far too low on 20 identities (chance 3.0 nats), watched for 10 steps: the cheapest run the raise acts on
TOO_LOW = {"synthetic_identities": 20, "batch_size": 8, "head_lr": 1e-5, "head_lr_raise": 10.0, "head_lr_watch_steps": 10}


def curve(steps: int = 300, **overrides) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(TrainConfig(max_steps=steps, threads=1, **overrides))
    return trainer, [trainer.train_step() for _ in range(steps)]


def below_go_line(row: dict) -> bool:
    return row["ce_ema"] <= go_line(row["chance_ce"])


@pytest.mark.slow
def test_the_guard_catches_the_head_lr_30_runaway_and_the_run_ends_below_the_go_line():
    _, unguarded = curve(60, head_lr=30.0)  # the runaway (benchmarks/head_lr.py: it ends far above the line)
    assert unguarded[-1]["ce_ema"] > 1000 and unguarded[-1][GUARD_FIRINGS] == 0
    trainer, rows = curve(head_lr=30.0, head_guard=True)
    assert below_go_line(rows[-1]), rows[-1]["ce_ema"]
    first = trainer.events[0]
    assert first.kind == "head_guard" and first.step <= 5 and first.lr_before == 30.0 and first.lr_after == pytest.approx(3.0)
    assert "ce_ema" in first.evidence and "restored" in first.evidence
    assert rows[-1][GUARD_FIRINGS] == len(trainer.events) and rows[-1][LR_RAISES] == 0
    # the LR the optimizer applies follows: after the last firing it never exceeds the guard's LR
    last = trainer.events[-1]
    assert max(r["head_lr_applied"] for r in rows[last.step :]) <= last.lr_after * (1 + 1e-6)


@pytest.mark.slow  # two runs
def test_the_guard_leaves_a_healthy_run_alone_step_for_step():
    _, plain = curve(60, head_lr=1e-2)  # benchmarks/head_lr.py: no firing in 14 healthy runs of 120-300 steps
    trainer, guarded = curve(60, head_lr=1e-2, head_guard=True)
    assert trainer.events == [] and guarded[-1][GUARD_FIRINGS] == 0
    assert [r["ce"] for r in guarded] == [r["ce"] for r in plain]  # an observer until it fires


@pytest.mark.slow
def test_the_raise_takes_a_too_low_head_lr_below_the_go_line_within_the_default_budget():
    trainer, rows = curve(head_lr=1e-5, **RAISE)
    assert below_go_line(rows[-1]), rows[-1]["ce_ema"]
    raises = trainer.events
    assert raises and all(e.kind == "head_lr_raise" and e.step % 50 == 0 for e in raises)
    assert raises[0].lr_before == 1e-5 and raises[0].lr_after == pytest.approx(1e-4) and "lr_too_low" in raises[0].evidence
    assert rows[-1][LR_RAISES] == len(raises) and max(e.lr_after for e in raises) <= 1e-2
    assert max(r["head_lr_applied"] for r in rows) > 10 * 1e-5  # the optimizer really applied the raised LR


def raises(steps: int = 10, **overrides) -> list[float]:
    """The head LR after each raise of a too-low run."""
    trainer, _ = curve(steps, **{**TOO_LOW, **overrides})
    return [e.lr_after for e in trainer.events if e.kind == RAISED]


def test_the_raise_judges_at_the_runs_own_go_line():
    # The head statistics of a real too-low run (lr_too_low) reporting, at its watch point, a ce_ema 0.6 nats below
    # chance: learning by the seed's Go line (log C - 0.39), still above one drawn at log C - 0.8.
    _, rows = curve(10, **{**TOO_LOW, "head_lr_raise": 1.0})
    rows[-1] = {**rows[-1], "ce_ema": rows[-1]["chance_ce"] - 0.6}

    def decisions(margin):
        judge = HeadLRChanges(TrainConfig(**TOO_LOW, chance_margin=margin))
        return [judge.judge(row, None, TOO_LOW["head_lr"]) for row in rows]

    assert not any(decisions(0.39))
    *before, change = decisions(0.8)
    assert not any(before) and change.kind == RAISED and change.factor == 10.0 and "lr_too_low" in change.event.evidence


def test_label_smoothing_and_the_margin_reach_the_raises_diagnosis():
    assert raises() == [pytest.approx(1e-4)]  # lr_too_low: raised tenfold
    # label smoothing 0.9 puts the smoothed CE's floor at 2.93 nats, above the Go line (2.61 for 20 ids): no head LR
    # crosses it, and the diagnosis says so instead of lr_too_low
    assert raises(label_smoothing=0.9) == []
    # 0.6: floor 2.36, below the seed's Go line but above the one drawn 0.8 nats under chance (2.20)
    assert raises(label_smoothing=0.6) == [pytest.approx(1e-4)]
    assert raises(label_smoothing=0.6, chance_margin=0.8) == []


def test_a_raise_restarts_the_chance_rules_grace_window():
    # what the too-low run reports (ce_ema flat at chance), without and with a raise at step 60 of a 60-step grace
    def results(raised_at):
        for step in range(1, 121):
            yield {"step": step, "samples": 32 * step, "ce": 5.98, "ce_ema": 5.98, "chance_ce": math.log(400),
                   LR_RAISES: int(raised_at is not None and step >= raised_at)}  # fmt: skip

    def verdict_step(raised_at):
        rule = ChanceLevelRule(60 * 32)
        return next((r["step"] for r in results(raised_at) if rule(r) == STUCK), None)

    assert verdict_step(None) == 60  # stopped at the grace window
    assert verdict_step(60) == 120  # judged a full grace window after the raise, on the raised LR's curve


def test_lr_changes_survive_a_checkpoint_and_the_resumed_run_continues_the_same_curve(tmp_path):
    cfg = TrainConfig(head_lr=30.0, head_guard=True, max_steps=40, threads=1)
    straight = Trainer(cfg)
    for _ in range(10):
        straight.train_step()
    torch.save(straight.state_dict(), tmp_path / "state.pt")
    resumed = Trainer(cfg)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.events == straight.events and resumed.events
    head_lrs = {g["name"]: g["base_lr"] for g in resumed.optimizer.param_groups if g["name"].startswith("head")}
    assert head_lrs and all(lr == pytest.approx(straight.events[-1].lr_after) for lr in head_lrs.values())
    after = [(straight.train_step(), resumed.train_step()) for _ in range(5)]
    assert [a["ce"] for a, _ in after] == [b["ce"] for _, b in after]
    assert [a["head_lr_applied"] for a, _ in after] == [b["head_lr_applied"] for _, b in after]


def test_the_plain_job_prints_each_event_and_counts_it_in_summary_and_metrics(tmp_path, capsys):
    # a guard that lowers the runaway LR a millionfold: the run then sits at chance, and its diagnosis must not
    # read the guard's LR as lr_too_low (raising it again would walk back into the runaway)
    out = tmp_path / "run"
    settings = ["head_lr=30", "head_guard=true", "head_guard_factor=1e-6", "max_steps=40", "batch_size=16", "threads=1"]
    assert main(["--set", *settings, "--grace-steps", "20", "--out", str(out), "--log-every", "60"]) == 0
    printed = capsys.readouterr().out
    assert "head guard fired at step" in printed and "head_lr 30 -> 3e-05" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary[GUARD_FIRINGS] == 1 and summary[LR_RAISES] == 0
    event = summary["head_lr_events"][0]
    assert event["kind"] == "head_guard" and event["lr_before"] == 30.0 and event["lr_after"] == pytest.approx(3e-5)
    assert summary["stuck_cause"] == "guard_lowered_lr", summary["stuck_cause"]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1][GUARD_FIRINGS]) == 1 and int(rows[0][GUARD_FIRINGS]) == 0


@pytest.mark.parametrize(
    "setting",
    ["head_guard=maybe", "head_guard_ce_ratio=0.5", "head_guard_factor=2", "head_guard_factor=0",
     "head_lr_raise=0.5", "head_lr_watch_steps=0", "head_lr_raise_cap=-1", "chance_margin=0"],
)  # fmt: skip
def test_a_bad_value_is_one_line_and_exit_2(tmp_path, capsys, setting):
    assert main(["--set", setting, "--out", str(tmp_path / "run")]) == 2
    key = setting.split("=")[0]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], lines
    assert not (tmp_path / "run").exists()
