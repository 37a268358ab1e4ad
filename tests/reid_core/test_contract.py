"""The training-function contract without Ray: what the harness derives, what it refuses, budgets and checkpoints."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import pytest
import torch

from reid_core.contract import BudgetSpent, Reporter, call
from reid_core.errors import UserError
from reid_core.schedule import ema

SEED_STYLE = Path(__file__).resolve().parents[2] / "examples" / "seed_style"


def collect(**kwargs):
    """A reporter keeping every report and, as the search does, a saved copy of each checkpoint."""
    rows = []

    def keep(metrics, state):
        if state is not None:  # saved and read back as the trial's checkpoint is (weights_only)
            buffer = io.BytesIO()
            torch.save(state, buffer)
            buffer.seek(0)
            state = torch.load(buffer, weights_only=True)
        rows.append((metrics, state))

    return rows, Reporter(keep, **kwargs)


def test_the_minimum_gets_chance_ce_and_the_trainers_smoothing():
    rows, report = collect()
    ces = [3.0, 2.5, 2.0]
    for step, ce in enumerate(ces, 1):
        report({"step": step, "samples": 64 * step, "ce": ce, "num_classes": 20, "micro_batches": 2})
    expected = None
    for (metrics, _), ce in zip(rows, ces):
        expected = ema(expected, ce, 0.95**2)  # beta per micro-batch, as Trainer's ce_ema_beta per batch
        assert metrics["ce_ema"] == pytest.approx(expected) and metrics["chance_ce"] == pytest.approx(math.log(20))


def test_a_reported_ce_ema_and_chance_ce_are_kept():
    rows, report = collect()
    report({"step": 1, "samples": 8, "ce": 3.0, "ce_ema": 2.0, "chance_ce": 4.0})
    assert rows[0][0]["ce_ema"] == 2.0 and rows[0][0]["chance_ce"] == 4.0


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({"step": 1, "samples": 8, "num_classes": 5}, "has no 'ce'"),
        ({"step": 1, "ce": 1.0, "num_classes": 5}, "has no 'samples'"),
        ({"step": 1, "samples": 8, "ce": 1.0}, "neither 'num_classes' nor 'chance_ce'"),
        ({"step": 1, "samples": 8, "ce": "low", "num_classes": 5}, "'ce' is 'low', not a number"),
        ([1, 2], "not a dict of metrics"),
    ],
)
def test_a_report_breaking_the_contract_is_one_line_naming_the_key(metrics, message):
    _, report = collect()
    with pytest.raises(UserError, match=message) as err:
        report(metrics)
    assert "\n" not in str(err.value)


def test_the_budget_ends_the_function_after_forwarding_its_last_report():
    rows, report = collect(max_samples=40)

    def endless(config, report):
        step = 0
        while True:
            step += 1
            try:
                report({"step": step, "samples": 16 * step, "ce": 1.0, "num_classes": 4})
            except Exception:  # a user's broad except does not swallow the harness's stop
                pass

    assert call(endless, {}, report) == {}
    assert [m["step"] for m, _ in rows] == [1, 2, 3]
    with pytest.raises(BudgetSpent):
        report({"step": 4, "samples": 64, "ce": 1.0, "num_classes": 4})


def test_a_function_that_never_reports_is_an_error():
    _, report = collect()
    with pytest.raises(UserError, match="without calling report"):
        call(lambda config, report: None, {}, report)


@pytest.fixture
def seed_style(monkeypatch):
    monkeypatch.syspath_prepend(str(SEED_STYLE))
    import tune_glue

    yield tune_glue
    for name in ("tune_glue", "train", "configs", "configs.config", "models", "models.model"):
        sys.modules.pop(name, None)


def test_checkpoint_hooks_continue_a_user_function_on_the_same_curve(seed_style):
    config = {"max_steps": 30, "batch_size": 8}
    whole, report = collect(checkpoint_every=10)
    call(seed_style.train, config, report, threads=1)
    states = {m["step"]: s for m, s in whole if s is not None}
    assert sorted(states) == [10, 20, 30]  # kept only when due; the function hands a callable
    resumed, report = collect(resume=states[20])
    call(seed_style.train, config, report, threads=1)
    assert [m["step"] for m, _ in resumed] == list(range(21, 31))
    assert [m["ce"] for m, _ in resumed] == [m["ce"] for m, _ in whole[20:]]
    assert [m["ce_ema"] for m, _ in resumed] == [m["ce_ema"] for m, _ in whole[20:]]  # the harness's EMA resumes too


def test_reid_core_train_is_the_reference_implementation():
    from reid_core.train import train

    rows, report = collect()
    config = {"synthetic_identities": 20, "batch_size": 8, "max_steps": 3, "ce_only_steps": 10, "threads": 1, "device": "cpu"}
    summary = call(train, config, report, threads=1)
    assert [m["step"] for m, _ in rows] == [1, 2, 3] and summary["end_reason"] == "completed"
    assert rows[0][0]["chance_ce"] == pytest.approx(math.log(20)) and "head_grad_norm" in rows[0][0]
