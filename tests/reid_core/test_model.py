"""The identity head (raw features, BNNeck, bias-free classifier) and the optimizer's parameter groups."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reid_core.config import TrainConfig
from reid_core.errors import UserError
from reid_core.model import build_model, context_length, parameter_groups


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    return TrainConfig(head_lr=3e-3, lr_backbone=2e-5, weight_decay=1e-4)


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_model(cfg, num_classes=400)


def test_identity_head_layout(model):
    assert model.classifier.bias is None
    assert model.classifier.weight.shape == (400, 128)
    assert 0.0008 < float(model.classifier.weight.detach().std()) < 0.0012  # initialised with std 0.001
    assert not model.bnneck.bias.requires_grad  # BNNeck: bias frozen
    assert model.bnneck.weight.requires_grad


def test_identity_head_sees_raw_not_normalised_features(model):
    """Normalised features without a scale bound the logits and keep CE at chance."""
    images = torch.randn(4, 3, 64, 32)
    raw = model.encode_image(images)
    assert torch.equal(raw, model.clip.encode_image(images, normalize=False))
    assert not torch.allclose(raw.norm(dim=1), torch.ones(4))


def test_clip_logit_scale_is_not_trained(model):
    assert not model.clip.logit_scale.requires_grad


def test_every_trainable_parameter_is_in_exactly_one_group(model, cfg):
    groups = parameter_groups(model, cfg)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == set(trainable)


def test_head_trains_at_head_lr_and_backbone_at_lr_backbone(model, cfg):
    groups = {g["name"]: g for g in parameter_groups(model, cfg)}
    head_ids = {id(model.classifier.weight), id(model.bnneck.weight)}
    for group in groups.values():
        in_head = {id(p) in head_ids for p in group["params"]}
        assert len(in_head) == 1, group["name"]  # a group is all head or all backbone
        expected = cfg.head_lr if in_head.pop() else cfg.lr_backbone
        assert group["lr"] == group["base_lr"] == expected, group["name"]
    assert any(p is model.classifier.weight for p in groups["head"]["params"])


def test_no_weight_decay_on_biases_and_norms(model, cfg):
    decay_of = {id(p): g["weight_decay"] for g in parameter_groups(model, cfg) for p in g["params"]}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "ln_" in name or "bnneck" in name or name.endswith("bias"):
            assert decay_of[id(param)] == 0.0, name
    assert decay_of[id(model.classifier.weight)] == cfg.weight_decay
    assert decay_of[id(model.clip.visual.conv1.weight)] == cfg.weight_decay


def test_context_length_from_model_or_config(cfg):
    assert context_length(cfg) == 32  # reid-tiny's own
    assert context_length(dataclasses.replace(cfg, context_length=16)) == 16


def test_unknown_model_suggests_close_names(cfg):
    with pytest.raises(UserError, match="unknown model 'reid-tiniy'; did you mean reid-tiny"):
        build_model(dataclasses.replace(cfg, model="reid-tiniy"), num_classes=10)


def test_missing_pretrained_file(cfg, tmp_path):
    with pytest.raises(UserError, match="pretrained weights file '.*nope.pt' does not exist"):
        build_model(dataclasses.replace(cfg, pretrained=str(tmp_path / "nope.pt")), num_classes=10)
