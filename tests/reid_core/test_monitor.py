"""HeadMonitor on user-style loops: the pre-flight evidence of planted faults, AMP skips, gradient scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reid_core.contract import first_report, preflight_checks
from reid_core.errors import UserError
from reid_core.monitor import HeadMonitor
from reid_core.preflight import PreflightError

CLASSES, DIM = 10, 16


class CosineHead(nn.Linear):
    """A normalised classifier with no scale: logits bounded in [-1, 1]."""

    def forward(self, x):
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


def user_loop(fault: str = ""):
    """A user's function with HeadMonitor, one fault planted the way it happens in user code."""

    def fn(config, report):
        gen = torch.Generator().manual_seed(0)
        neck = nn.BatchNorm1d(DIM)
        head = (CosineHead if fault == "cosine" else nn.Linear)(DIM, CLASSES, bias=False)
        params = list(neck.parameters()) + ([] if fault == "not_in_optimizer" else list(head.parameters()))
        optimizer = torch.optim.SGD(params, lr=0.1)
        monitor = HeadMonitor(head, optimizer, neck=neck)
        for step in range(1, 4):
            labels = torch.randint(CLASSES + (5 if fault == "labels" else 0), (32,), generator=gen)
            monitor.observe_labels(labels)
            features = torch.randn(32, DIM, generator=gen)
            if fault == "detached":
                features = features.detach()
                logits = head(neck(features)).detach().requires_grad_()
            else:
                logits = head(neck(features))
            loss = F.cross_entropy(logits, labels % CLASSES)
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            optimizer.zero_grad()
            report({"step": step, "samples": 32 * step, "ce": loss.item(), "num_classes": CLASSES, **monitor.after_step()})

    return fn


@pytest.mark.parametrize(
    "fault, cause",
    [("not_in_optimizer", "head_not_in_optimizer"), ("detached", "no_gradient"), ("cosine", "bounded_logits")],
)
def test_preflight_names_a_planted_fault_from_the_first_step(fault, cause):
    first = first_report(user_loop(fault), {})
    with pytest.raises(PreflightError, match=f"pre-flight: {cause}:"):
        preflight_checks(first, log=lambda s: None)


def test_preflight_catches_labels_out_of_range():
    with pytest.raises(UserError, match=r"labels of the first step span \[0, 1[0-4]\] but the head has 10 classes"):
        preflight_checks(first_report(user_loop("labels"), {}), log=lambda s: None)


def test_a_healthy_loop_passes_and_a_bare_one_is_skipped_with_a_note():
    said = []
    preflight_checks(first_report(user_loop(), {}), log=said.append)
    assert "head in the optimizer, gradient reaches the head, logits unbounded, labels in range" in said[0]
    assert "skipped" not in said[0]
    said.clear()
    preflight_checks({"step": 1, "samples": 8, "ce": 2.3, "num_classes": 10}, log=said.append)
    assert "no head check possible; skipped:" in said[0] and "HeadMonitor" in said[0]


def test_metrics_are_means_over_micro_batches_and_evaluation_is_left_out():
    head = nn.Linear(DIM, CLASSES, bias=False)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    monitor = HeadMonitor(head, optimizer)
    x1, x2 = torch.randn(8, DIM), 3 * torch.randn(8, DIM)
    (head(x1).sum() + head(x2).sum()).backward()
    with torch.no_grad():
        head(100 * x1)  # evaluation: not counted
    monitor.after_backward()
    optimizer.step()
    out = monitor.after_step()
    assert out["feature_norm"] == pytest.approx(((x1.norm(dim=1).mean() + x2.norm(dim=1).mean()) / 2).item(), rel=1e-5)
    assert out["head_lr_applied"] == 0.1 and out["head_in_optimizer"] is True and out["head_weight_change"] > 0


def test_fp16_skipped_steps_and_the_true_gradient_norm():
    head = nn.Linear(DIM, CLASSES, bias=False)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    monitor = HeadMonitor(head, optimizer, scaler=scaler)
    x = torch.randn(8, DIM)
    scaler.scale(head(x).pow(2).mean()).backward()
    scaled_read = monitor.after_backward()["head_grad_norm"]  # not unscaled yet: the monitor divides
    scaler.unscale_(optimizer)
    assert scaled_read == pytest.approx(head.weight.grad.norm().item(), rel=1e-5)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    assert monitor.after_step()["skipped_steps"] == 0
    head.weight.register_hook(lambda g: g * float("inf"))
    for _ in range(3):
        scaler.scale(head(x).pow(2).mean()).backward()
        scaler.unscale_(optimizer)
        monitor.after_backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        out = monitor.after_step()
    assert out["skipped_steps"] == 3 and out["loss_scale"] < 2.0**10


def _linear_loop(monitor: HeadMonitor, head: nn.Linear, optimizer, steps: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(steps):
        x = torch.randn(8, DIM, generator=gen)
        F.cross_entropy(head(x), torch.randint(CLASSES, (8,), generator=gen)).backward()
        monitor.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        rows.append(monitor.after_step())
    return rows


def test_statistics_are_measured_at_the_first_step_and_every_nth_and_repeated_between():
    torch.manual_seed(0)
    head = nn.Linear(DIM, CLASSES, bias=False)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    rows = _linear_loop(HeadMonitor(head, optimizer, every=5), head, optimizer, 11)
    assert [r["head_measured_step"] for r in rows] == [1, 1, 1, 1, 5, 5, 5, 5, 5, 10, 10]
    assert rows[9]["head_weight_change"] > rows[8]["head_weight_change"] == rows[4]["head_weight_change"]
    assert all(r["head_lr_applied"] == 0.1 for r in rows)  # read every step
    torch.manual_seed(0)
    head = nn.Linear(DIM, CLASSES, bias=False)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    every_step = _linear_loop(HeadMonitor(head, optimizer, every=1), head, optimizer, 11)
    assert [r["head_measured_step"] for r in every_step] == list(range(1, 12))
    assert every_step[9]["head_weight_change"] == pytest.approx(rows[9]["head_weight_change"], rel=1e-6)


def test_a_resumed_monitor_measures_on_the_same_steps_and_repeats_the_last_measurement():
    head = nn.Linear(DIM, CLASSES, bias=False)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    monitor = HeadMonitor(head, optimizer, every=5)
    before = _linear_loop(monitor, head, optimizer, 7)
    resumed = HeadMonitor(head, optimizer, every=5)
    resumed.load_state_dict(monitor.state_dict())
    after = _linear_loop(resumed, head, optimizer, 4)  # steps 8-11
    assert after[0]["head_measured_step"] == 5 and after[0]["head_weight_change"] == before[-1]["head_weight_change"]
    assert [r["head_measured_step"] for r in after] == [5, 5, 10, 10]


@pytest.mark.parametrize("every", [0, -1, 2.5, True])
def test_a_bad_every_is_refused(every):
    with pytest.raises(ValueError, match="every=.*must be an integer >= 1"):
        HeadMonitor(nn.Linear(DIM, CLASSES), every=every)
