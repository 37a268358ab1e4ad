"""The training loop: learning vs. staying at chance, gradient accumulation, the CE-only warm-up,
divergence and the per-step metrics contract. Real open_clip model, synthetic data, CPU, one thread."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import pytest
import torch

from reid_core.config import TrainConfig
from reid_core.errors import UserError
from reid_core.schedule import lr_factor, sdm_weight_at
from reid_core.schema import EVAL_METRICS, STEP_METRICS
from reid_core.train import train
from reid_core.trainer import Trainer


def text_tower(trainer: Trainer) -> dict[str, torch.nn.Parameter]:
    """The open_clip text encoder's trainable parameters (transformer, token_embedding, text_projection, ...)."""
    return {
        name: p
        for name, p in trainer.model.clip.named_parameters()
        if not name.startswith("visual.") and p.requires_grad
    }


# --- acceptance: the head LR decides whether CE leaves chance ------------------------------------


@pytest.mark.slow  # 300 steps each
@pytest.mark.parametrize(
    "head_lr, check",
    [
        (1e-2, lambda ce: ce <= 5.6),  # learns: measured 1.52 at step 300 on the shipped pretrained weights (~4.1 from random init)
        (1e-6, lambda ce: ce >= 5.8),  # stuck at chance (log 400 = 5.99): measured 5.99
    ],
    ids=["head_lr=1e-2 learns", "head_lr=1e-6 stuck"],
)
def test_head_lr_decides_whether_ce_leaves_chance(head_lr: float, check):
    """The failure this project exists for: with the synthetic default (400 identities), a good head LR
    takes ce_ema below 5.6 within 300 optimizer steps, a tiny one leaves it at chance. ~20 s each."""
    cfg = TrainConfig(head_lr=head_lr, backbone_lr=1e-5, max_steps=300, threads=1, device="cpu")
    reports: list[dict[str, Any]] = []
    summary = train(cfg, reports.append)
    at_300 = reports[-1]
    assert summary["end_reason"] == "completed"
    assert at_300["step"] == 300 and len(reports) == 300
    assert at_300["chance_ce"] == pytest.approx(math.log(400))
    assert check(at_300["ce_ema"]), f"ce_ema at step 300 is {at_300['ce_ema']:.3f} with head_lr={head_lr}"


# --- gradient accumulation ---------------------------------------------------------------------


def recording(stream: Iterator, seen: list) -> Iterator:
    """Pass a micro-batch stream through, keeping what it yielded."""
    for batch in stream:
        seen.append(batch)
        yield batch


@pytest.mark.parametrize("b, k", [(4, 4), (8, 2)])
def test_grad_accumulation_equals_one_big_batch(b: int, k: int):
    """``grad_accum_steps=k`` at batch ``b`` gives the gradient of one batch of ``k*b``.

    Both trainers start from the same seed (same initial weights) and their micro-batch
    streams yield the same images in the same order (checked here, not assumed). Both are in
    the CE-only warm-up, so SDM, whose in-batch softmax really does depend on the batch, is 0.

    BatchNorm: the BNNeck normalises each micro-batch with its own mean and variance; that
    is the one intended difference between accumulation and a big batch (as in every
    framework). The test puts the BNNeck in eval mode on both trainers so that everything
    else must match exactly.

    Compared: the gradients left by ``backward`` (not the weights after an AdamW step: Adam's
    first step is invariant to the gradient's scale, so a missing divide-by-k would pass).
    Tolerance rtol 1e-4 / atol 1e-6: the same fp32 numbers summed in another order
    (k partial sums instead of one); a missing 1/k would be off by a factor of k.
    """
    base = TrainConfig(synthetic_identities=20, ce_only_steps=1000, seed=5, threads=1, device="cpu")
    big = Trainer(dataclasses.replace(base, batch_size=k * b, grad_accum_steps=1))
    acc = Trainer(dataclasses.replace(base, batch_size=b, grad_accum_steps=k))
    for name, p in big.model.named_parameters():
        assert torch.equal(p, dict(acc.model.named_parameters())[name]), f"initial weights differ: {name}"
    big_seen, acc_seen = [], []
    big.stream, acc.stream = recording(big.stream, big_seen), recording(acc.stream, acc_seen)
    for trainer in (big, acc):
        trainer.model.bnneck.eval()

    big_stats = big.backward(sdm_weight=0.0)
    acc_stats = acc.backward(sdm_weight=0.0)

    assert len(big_seen) == 1 and len(acc_seen) == k
    for i in range(3):  # images, labels, tokens
        assert torch.equal(big_seen[0][i], torch.cat([mb[i] for mb in acc_seen]))
    ce, sdm, loss = 0, 1, 2
    assert float(acc_stats[ce]) == pytest.approx(float(big_stats[ce]), rel=1e-5)  # reported CE: mean of the micro-batches
    assert float(acc_stats[loss]) == pytest.approx(float(big_stats[loss]), rel=1e-5)
    assert float(acc_stats[sdm]) == float(big_stats[sdm]) == 0.0

    acc_params = dict(acc.model.named_parameters())
    compared = 0
    for name, p in big.model.named_parameters():
        q = acc_params[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is None:
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
        compared += 1
    assert big.model.classifier.weight.grad.abs().sum() > 0
    assert compared > 30  # the whole image tower and the head, not just a few tensors


def test_accumulation_counts_samples_per_optimizer_step(small_cfg):
    cfg = dataclasses.replace(small_cfg, batch_size=4, grad_accum_steps=3, max_steps=2)
    reports: list[dict] = []
    train(cfg, reports.append)
    assert [r["step"] for r in reports] == [1, 2]
    assert [r["samples"] for r in reports] == [12, 24]  # images seen, the search's time axis


# --- CE-only warm-up ----------------------------------------------------------------------------


def test_warmup_runs_no_text_encoder_and_leaves_text_tower_untouched(small_cfg):
    """During ``ce_only_steps`` the SDM weight is 0 and SDM contributes nothing: the text encoder is not
    run, its parameters get no gradient, and AdamW (momentum, weight decay) leaves them as they were.
    The first step after the warm-up turns all of that on, so the checks below can fail."""
    cfg = dataclasses.replace(small_cfg, ce_only_steps=3, sdm_ramp_steps=2, max_steps=10)
    trainer = Trainer(cfg)
    text = text_tower(trainer)
    assert {"transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight", "text_projection"} <= set(text)
    text_before = {name: p.detach().clone() for name, p in text.items()}
    head_before = trainer.model.classifier.weight.detach().clone()
    text_calls: list[int] = []
    trainer.model.clip.transformer.register_forward_pre_hook(lambda module, args: text_calls.append(1))
    trainer.model.clip.token_embedding.register_forward_pre_hook(lambda module, args: text_calls.append(1))

    # the gradients one warm-up step leaves
    assert sdm_weight_at(0, cfg.ce_only_steps, cfg.sdm_ramp_steps, cfg.sdm_weight) == 0.0
    trainer.backward(sdm_weight=0.0)
    assert all(p.grad is None for p in text.values())
    assert trainer.model.classifier.weight.grad.abs().sum() > 0
    trainer.optimizer.zero_grad(set_to_none=True)

    for _ in range(cfg.ce_only_steps):
        metrics = trainer.train_step()
        assert metrics["sdm_weight"] == 0.0 and metrics["sdm"] == 0.0
        assert metrics["loss"] == metrics["ce"]
    assert text_calls == []
    for name, p in text.items():
        assert torch.equal(p, text_before[name]), f"text parameter {name} changed during the CE-only warm-up"
    assert not torch.equal(trainer.model.classifier.weight, head_before)  # the head did train

    # the first step after the warm-up: SDM on, text encoder run and trained
    metrics = trainer.train_step()
    assert metrics["sdm_weight"] == pytest.approx(cfg.sdm_weight / cfg.sdm_ramp_steps)
    assert metrics["sdm"] > 0
    assert metrics["loss"] == pytest.approx(metrics["ce"] + metrics["sdm_weight"] * metrics["sdm"], rel=1e-5)
    assert text_calls
    assert not torch.equal(text["text_projection"], text_before["text_projection"])


def test_sdm_weight_follows_the_ramp_in_reports(small_cfg):
    cfg = dataclasses.replace(small_cfg, ce_only_steps=2, sdm_ramp_steps=2, sdm_weight=0.5, max_steps=5)
    reports: list[dict] = []
    train(cfg, reports.append)
    assert [r["sdm_weight"] for r in reports] == [0.0, 0.0, 0.25, 0.5, 0.5]
    assert [r["sdm"] > 0 for r in reports] == [False, False, True, True, True]


# --- divergence ---------------------------------------------------------------------------------


def test_nan_ends_the_run_as_diverged(small_cfg):
    """head_lr=1e30 overflows the classifier within two steps; the run stops there and says why."""
    cfg = dataclasses.replace(small_cfg, head_lr=1e30, max_steps=20)
    reports: list[dict] = []
    summary = train(cfg, reports.append)
    assert summary["end_reason"] == "diverged"
    assert summary["steps"] == len(reports) < cfg.max_steps
    assert not math.isfinite(reports[-1]["loss"])
    assert not math.isfinite(reports[-1]["ce_ema"])
    assert all(math.isfinite(r["loss"]) for r in reports[:-1])
    assert "lower head_lr" in summary["message"]
    assert not any(key in reports[-1] for key in EVAL_METRICS)  # no evaluation of a NaN model


# --- the per-step metrics contract --------------------------------------------------------------


def test_reports_every_step_metric(small_cfg):
    cfg = dataclasses.replace(
        small_cfg, max_steps=4, grad_accum_steps=2, lr_warmup_steps=2, ce_only_steps=2, sdm_ramp_steps=1, eval_every=2
    )
    reports: list[dict] = []
    summary = train(cfg, reports.append)
    assert len(reports) == 4
    for step, r in enumerate(reports, start=1):
        assert set(STEP_METRICS) <= set(r), set(STEP_METRICS) - set(r)
        assert r["step"] == step
        assert r["samples"] == step * 16
        assert r["chance_ce"] == pytest.approx(math.log(20))
        assert r["head_lr_applied"] == pytest.approx(cfg.head_lr * lr_factor(step - 1, 2, 4))
        assert r["backbone_lr_applied"] == pytest.approx(cfg.backbone_lr * lr_factor(step - 1, 2, 4))
        assert r["loss_scale"] == 1.0 and r["skipped_steps"] == 0  # no fp16 on CPU
        assert r["head_grad_norm"] > 0 and r["head_weight_change"] > 0
        assert r["images_per_s"] > 0
        assert all(math.isfinite(r[key]) for key in STEP_METRICS if key != "unseen_ce")
        assert math.isnan(r["unseen_ce"])  # measured every unseen_every (50) steps: NaN before the first
    assert [set(EVAL_METRICS) <= set(r) for r in reports] == [False, True, False, True]  # eval_every=2
    assert 0 <= reports[-1]["val_r1"] <= reports[-1]["val_r5"] <= reports[-1]["val_r10"] <= 100
    assert summary["end_reason"] == "completed"
    assert summary["steps"] == 4 and summary["samples"] == 64
    assert summary["num_classes"] == 20
    assert summary["best_ce_ema"] == min(r["ce_ema"] for r in reports)
    assert summary["final"] == reports[-1]


def test_ce_ema_smooths_ce(small_cfg):
    reports: list[dict] = []
    train(dataclasses.replace(small_cfg, max_steps=3, ce_ema_beta=0.9), reports.append)
    assert reports[0]["ce_ema"] == reports[0]["ce"]
    assert reports[1]["ce_ema"] == pytest.approx(0.9 * reports[0]["ce"] + 0.1 * reports[1]["ce"])


def test_ce_ema_smooths_over_images_not_steps(small_cfg):
    # With 2 micro-batches a step, each step weighs two batches: ce_ema spans the same images.
    reports: list[dict] = []
    train(dataclasses.replace(small_cfg, max_steps=2, ce_ema_beta=0.9, grad_accum_steps=2), reports.append)
    assert reports[1]["ce_ema"] == pytest.approx(0.81 * reports[0]["ce"] + 0.19 * reports[1]["ce"])


def test_untrained_head_starts_at_chance(small_cfg):
    """Classifier weights of std 0.001 give near-uniform logits: the first CE is log(C)."""
    reports: list[dict] = []
    train(dataclasses.replace(small_cfg, max_steps=1), reports.append)
    assert reports[0]["ce"] == pytest.approx(math.log(20), abs=0.01)


def test_bad_data_fails_before_any_report(small_cfg):
    reports: list[dict] = []
    with pytest.raises(UserError, match=r"requires \[0, 9\]"):
        train(dataclasses.replace(small_cfg, num_classes=10), reports.append)
    assert reports == []


def test_same_seed_same_curve_different_seed_different(small_cfg):
    def curve(seed: int) -> list[float]:
        reports: list[dict] = []
        train(dataclasses.replace(small_cfg, seed=seed, max_steps=3), reports.append)
        return [r["ce"] for r in reports]

    assert curve(0) == curve(0)
    assert curve(0) != curve(1)


# --- evaluation at the search's rungs --------------------------------------------------------------


def test_evaluates_at_the_first_step_past_each_rung_without_changing_the_curve(small_cfg):
    """The search passes its ASHA rungs (images seen) so that a rung ranking trials by val_r1 reads a
    value measured there; evaluating must not change training (the re-run contract)."""
    cfg = dataclasses.replace(small_cfg, max_steps=6)  # 8 images per step
    with_evals: list[dict] = []
    train(cfg, with_evals.append, eval_at_samples=[40, 20, 24])  # step 3 passes 20 and 24, step 5 passes 40
    assert [r["step"] for r in with_evals if "val_r1" in r] == [3, 5, 6]  # and the end of the run
    plain: list[dict] = []
    train(cfg, plain.append)
    assert [r["step"] for r in plain if "val_r1" in r] == [6]
    assert [r["ce"] for r in with_evals] == [r["ce"] for r in plain]
