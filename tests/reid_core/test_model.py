"""The identity head (raw features, BNNeck, bias-free classifier), the optimizer's parameter groups
and pretrained weights (local files, other image sizes, offline tags)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from reid_core.flags import shortcut_values
from reid_core.config import TrainConfig
from reid_core.errors import UserError
from reid_core.model import build_model, context_length, parameter_groups
from reid_core.train import load_cli_config
from reid_core.trainer import Trainer
from tests.reid_core.test_cli import check_one_line_error, run_main


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    return TrainConfig(head_lr=3e-3, backbone_lr=2e-5, weight_decay=1e-4)


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


def test_head_trains_at_head_lr_and_backbone_at_backbone_lr(model, cfg):
    groups = {g["name"]: g for g in parameter_groups(model, cfg)}
    head_ids = {id(model.classifier.weight), id(model.bnneck.weight)}
    for group in groups.values():
        in_head = {id(p) in head_ids for p in group["params"]}
        assert len(in_head) == 1, group["name"]  # a group is all head or all backbone
        expected = cfg.head_lr if in_head.pop() else cfg.backbone_lr
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


# --- pretrained weights: local files, image sizes, offline tags ----------------------------------


@pytest.fixture(scope="module")
def saved_clip(tmp_path_factory):
    """The tiny model's open_clip weights saved as a local file (what --pretrained PATH loads)."""
    torch.manual_seed(3)
    saved = build_model(TrainConfig(pretrained=None), num_classes=10).eval()  # not the shipped default weights
    path = tmp_path_factory.mktemp("weights") / "reid-tiny.pt"
    torch.save(saved.clip.state_dict(), path)
    return saved, path


def test_local_weights_file_gives_the_saved_models_outputs(saved_clip, tmp_path):
    """Through the plain job's own flag parsing: --pretrained PATH, then the Trainer's model."""
    saved, path = saved_clip
    args = argparse.Namespace(data=None, data_format=None, model=None, pretrained=str(path))
    cfg = TrainConfig.from_dict(shortcut_values(args), base=load_cli_config(None, ["synthetic_identities=10", "device=cpu"]))
    torch.manual_seed(99)  # a different seed: only the file can make the weights equal
    loaded = Trainer(cfg).model.eval()
    images, tokens = torch.randn(3, 3, 64, 32), torch.randint(0, 49408, (3, 32))
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), saved.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), saved.encode_text(tokens))


def test_weights_load_at_another_image_size(tmp_path):
    """Released CLIPs are square (ViT-B-16: 224x224, a 14x14 grid); ReID uses tall images (384x128).
    open_clip resizes the position embedding: here a 4x4 grid (32x32) into an 8x4 one (64x32)."""
    square = build_model(TrainConfig(image_size=(32, 32), pretrained=None), num_classes=10)  # the shipped weights are 64x32
    torch.save(square.clip.state_dict(), tmp_path / "square.pt")
    tall = build_model(TrainConfig(image_size=(64, 32), pretrained=str(tmp_path / "square.pt")), num_classes=10)
    assert tall.clip.visual.positional_embedding.shape == (8 * 4 + 1, 64)
    assert torch.equal(tall.clip.visual.conv1.weight, square.clip.visual.conv1.weight)
    assert torch.isfinite(tall.encode_image(torch.randn(2, 3, 64, 32))).all()


def test_weights_of_another_model_are_one_line_error(tmp_path):
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="cannot load pretrained weights '.*other.pt' into model 'reid-tiny'"):
        build_model(TrainConfig(pretrained=str(tmp_path / "other.pt")), num_classes=10)


def test_unknown_pretrained_tag_lists_the_models_tags():
    with pytest.raises(UserError, match="pretrained 'openia' is neither a weights file nor a tag of model 'ViT-B-16' \\(its tags: openai, "):
        build_model(TrainConfig(model="ViT-B-16", pretrained="openia"), num_classes=10)


def test_offline_tag_is_one_line_naming_a_local_file(monkeypatch, tmp_path, capsys):
    """``--model ViT-B-16 --pretrained openai`` without internet or a cached copy: no network traceback,
    no minute of Hub retries, but one line that names the fix, before any data is read."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("reid_core.pretrained._cached_weights", lambda tag: None)  # whatever this machine has cached
    out = tmp_path / "run"
    code = run_main(["--model", "ViT-B-16", "--pretrained", "openai", "--set", "device=cpu", "--out", str(out)])
    fragment = (
        r"weights 'openai' of model 'ViT-B-16' are not in the local cache and huggingface.co cannot be reached "
        r"\(offline\); download https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/"
        r"open_clip_pytorch_model.bin where there is internet and pass the file with --pretrained PATH"
    )
    check_one_line_error(code, capsys.readouterr().err, fragment, out)


# --- the scale users train at: ViT-B/16 (issue 27) ------------------------------------------------


@pytest.mark.slow
def test_vit_b16_weights_file_round_trip_and_another_architectures_file_is_one_line(tmp_path):
    """A ViT-B/16 state dict (random init, ~600 MB fp32) saved as a file loads back to identical outputs at
    384x128; the tiny model's file into ViT-B/16, and ViT-B/16's into the tiny model, are each one line."""
    cfg = TrainConfig(model="ViT-B-16", pretrained=None, image_size=(384, 128), device="cpu")
    torch.manual_seed(5)
    saved = build_model(cfg, num_classes=10).eval()
    path = tmp_path / "vit-b-16.pt"
    torch.save(saved.clip.state_dict(), path)
    assert path.stat().st_size > 500e6
    torch.manual_seed(99)  # a different seed: only the file can make the weights equal
    loaded = build_model(dataclasses.replace(cfg, pretrained=str(path)), num_classes=10).eval()
    images, tokens = torch.randn(1, 3, 384, 128), torch.randint(0, 49408, (1, 77))
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), saved.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), saved.encode_text(tokens))
    del saved, loaded
    tiny = tmp_path / "reid-tiny.pt"
    torch.save(build_model(TrainConfig(pretrained=None), num_classes=10).clip.state_dict(), tiny)
    for model, weights in (("ViT-B-16", tiny), ("reid-tiny", path)):
        size = (384, 128) if model == "ViT-B-16" else (64, 32)
        with pytest.raises(UserError) as raised:
            build_model(TrainConfig(model=model, pretrained=str(weights), image_size=size), num_classes=10)
        message = str(raised.value)
        assert "\n" not in message and message.startswith(f"cannot load pretrained weights '{weights}' into model '{model}'")
        assert message.endswith("pass weights saved from this model")
    path.unlink()  # 600 MB: not left for the end of the session
