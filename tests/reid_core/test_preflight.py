"""Pre-flight: each check fires on its planted fault and passes on the default config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

import reid_core.preflight
import reid_core.trainer
from reid_core.config import TrainConfig
from reid_core.errors import UserError
from reid_core.model import ReIDModel
from reid_core.preflight import PreflightError, preflight
from reid_core.train import main as train_main


def test_default_config_passes_in_seconds():
    took = preflight(TrainConfig())
    assert took < 30  # the budget on this machine; measured ~5 s


def test_head_left_out_of_the_optimizer(monkeypatch):
    groups = reid_core.trainer.parameter_groups
    monkeypatch.setattr(reid_core.trainer, "parameter_groups", lambda m, c: [g for g in groups(m, c) if "head" not in g["name"]])
    with pytest.raises(PreflightError, match="head_not_in_optimizer: 2 trainable parameters are in no optimizer group"):
        preflight(TrainConfig())


def test_logits_computed_without_gradient(monkeypatch):
    original = ReIDModel.identity_logits

    def no_grad_logits(self, features):
        with torch.no_grad():
            return original(self, features)

    monkeypatch.setattr(ReIDModel, "identity_logits", no_grad_logits)
    with pytest.raises(PreflightError, match="no_gradient"):
        preflight(TrainConfig())


def test_cosine_classifier_without_scale(monkeypatch):
    monkeypatch.setattr(
        ReIDModel,
        "identity_logits",
        lambda self, f: F.linear(F.normalize(f, dim=-1), F.normalize(self.classifier.weight, dim=-1)),
    )
    with pytest.raises(PreflightError, match="bounded_logits"):
        preflight(TrainConfig())


def test_a_head_lr_that_cannot_learn_is_named_when_a_known_good_one_learns():
    with pytest.raises(PreflightError, match=r"lr_too_low: .*at head_lr 1e-06 .*head_lr 0.01 reached .*raise head_lr .* from 1e-06"):
        preflight(TrainConfig(), overfit_head_lr=1e-6)


def test_when_no_head_lr_learns_the_labels_head_and_data_are_blamed(monkeypatch):
    monkeypatch.setattr(reid_core.preflight, "OVERFIT_TARGET", 0.0)  # a bar no head LR can clear
    with pytest.raises(PreflightError, match=r"cannot_overfit: .*at head_lr 1e-06 .*and head_lr 0.01 left it at .*check the labels"):
        preflight(TrainConfig(), overfit_head_lr=1e-6)


def test_labels_out_of_range():
    with pytest.raises(UserError, match=r"labels span \[0, 399\] but num_classes=300"):
        preflight(TrainConfig(num_classes=300))


@pytest.mark.slow  # the pre-flight, then the run
def test_plain_job_runs_the_same_checks_with_a_flag(tmp_path, capsys):
    out = tmp_path / "run"
    code = train_main(["--preflight", "--set", "head_lr=1e-6", "max_steps=5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "pre-flight: lr_too_low" in err and "head_lr 1e-06" in err and err.count("\n") == 1
    assert not out.exists()


def planted(plant):
    """A `build` for preflight: the Trainer as usual, then the fault planted in it as user code would have it."""

    def build(cfg, data):
        trainer = reid_core.trainer.Trainer(cfg, data=data)
        plant(trainer)
        return trainer

    return build


def squash(fn):
    def plant(t):
        inner = t.model.identity_logits
        t.model.identity_logits = lambda f: fn(inner(f))

    return plant


@pytest.mark.parametrize("fn", [lambda x: x.clamp(-1, 1), lambda x: x.softmax(-1)], ids=["clamp", "softmax twice"])
def test_logits_squashed_after_the_classifier_are_bounded_though_the_init_logits_are_tiny(fn):
    # at the init (weights std 0.001) the logits sit far inside [-1, 1]: only grown weights show the bound
    with pytest.raises(PreflightError, match="bounded_logits"):
        preflight(TrainConfig(pretrained=None), build=planted(squash(fn)))


def test_a_tiny_logit_scale_is_not_called_a_bounded_head():
    # linear, so the logits grow with the weights: the wiring checks pass it; the overfit run then fails
    with pytest.raises(PreflightError, match="cannot_overfit"):
        preflight(TrainConfig(), build=planted(squash(lambda x: 0.01 * x)))


def test_raw_identity_ids_fed_as_labels_are_out_of_range():
    def raw_ids(t):
        inner = t.stream
        t.stream = ((images, 1000 + 7 * labels, tokens) for images, labels, tokens in inner)

    # raw ids 1000 + 7 x label (the first batch's smallest label depends on its draw: 23 since one image of each
    # identity is held out, 0-14 before)
    with pytest.raises(PreflightError, match=r"labels_out_of_range: the first batch's labels span \[1\d\d\d, .*400 rows.*fix: map"):
        preflight(TrainConfig(), build=planted(raw_ids))


def test_label_smoothing_whose_ce_floor_is_above_the_go_line_is_refused_before_training():
    with pytest.raises(PreflightError, match=r"label_smoothing_too_high: label_smoothing 0.95 puts the CE floor at 5.88, above the Go line 5.60"):
        preflight(TrainConfig(label_smoothing=0.95))
