"""The pretraining recipe behind the shipped ``reid-tiny`` weights, the shipped file itself, and how
``pretrained`` resolves: 'auto' (the model's shipped weights or random init), 'none', a shipped tag."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors import safe_open

from reid_core.config import TrainConfig
from reid_core.data import SYNTHETIC_DATA_SEED
from reid_core.errors import UserError
from reid_core.model import build_model
from reid_core.pretrained import resolve_pretrained
from reid_core.pretrain import Recipe, main, pretraining_people
from reid_core.shipped_weights import shipped_file
from reid_core.synthetic import attributes, make_synthetic

SHIPPED = Path(shipped_file("reid-tiny", "synthetic"))
# A recipe that runs in about a second: same code path, tiny budget.
SHORT = ["--steps", "3", "--identities", "48", "--images-per-identity", "2", "--batch-size", "16", "--threads", "1"]


def recipe_of(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["reid_tune_recipe"])


def test_pretraining_people_share_no_attributes_with_the_default_data_sets_identities():
    """Retrieval on the default's unseen test identities must stay unseen: no pretraining person looks
    like (has every caption-visible attribute of) a default train or test identity."""
    cfg = TrainConfig()
    train, test = make_synthetic(cfg.synthetic_identities, 2, (16, 8), seed=SYNTHETIC_DATA_SEED)  # same people, small images
    default = {attributes(p) for p in train.people + test.people}
    assert len(train.people) == 400 and len(test.people) == 100
    pretraining = [attributes(p) for p in pretraining_people(Recipe().identities, Recipe().data_seed)]
    assert len(set(pretraining)) == Recipe().identities  # distinct people, none twice
    assert default.isdisjoint(pretraining)


def test_the_recipe_reproduces_its_file_bit_for_bit_and_open_clip_loads_it(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main([*SHORT, "--out", str(a)]) == 0
    assert main([*SHORT, "--out", str(b), "--seed", "0"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert main([*SHORT, "--out", str(tmp_path / "c.safetensors"), "--seed", "1"]) == 0
    assert (tmp_path / "c.safetensors").read_bytes() != a.read_bytes()  # the seed matters: the test can fail
    assert recipe_of(a)["steps"] == 3 and recipe_of(a)["threads"] == 1
    # an ordinary open_clip weights file: create_model(pretrained=FILE) loads it strictly
    loaded = open_clip.create_model("reid-tiny", pretrained=str(a), require_pretrained=True)
    with safe_open(str(a), "pt") as f:
        assert torch.equal(loaded.visual.conv1.weight, f.get_tensor("visual.conv1.weight").float())


def test_the_shipped_file_is_small_fp16_and_made_by_the_default_recipe():
    """`python -m reid_core.pretrain --out FILE` with no other flag writes this file (README: --check)."""
    assert SHIPPED.stat().st_size <= 8 * 1024 * 1024
    assert recipe_of(SHIPPED) == json.loads(Recipe().metadata()["reid_tune_recipe"])
    with safe_open(str(SHIPPED), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_reid_tiny_starts_from_the_shipped_weights_by_default():
    cfg = TrainConfig()
    assert cfg.pretrained == "auto" and resolve_pretrained(cfg) == (str(SHIPPED), False)
    model = build_model(cfg, num_classes=10)
    with safe_open(str(SHIPPED), "pt") as f:
        assert torch.equal(model.clip.token_embedding.weight, f.get_tensor("token_embedding.weight").float())
    # the same weights by their tag
    assert resolve_pretrained(dataclasses.replace(cfg, pretrained="synthetic")) == (str(SHIPPED), False)


@pytest.mark.parametrize("pretrained", [None, "none"])
def test_pretrained_none_keeps_random_init(pretrained):
    cfg = TrainConfig().with_overrides([f"pretrained={pretrained}"]) if pretrained else TrainConfig(pretrained=None)
    assert cfg.pretrained is None and resolve_pretrained(cfg) == (None, False)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=10)
    with safe_open(str(SHIPPED), "pt") as f:
        assert not torch.equal(model.clip.token_embedding.weight, f.get_tensor("token_embedding.weight").float())


def test_other_models_keep_random_init_by_default():
    """'auto' means the model's own shipped weights: ViT-B-16 has none here, so random init, as before."""
    assert resolve_pretrained(TrainConfig(model="ViT-B-16")) == (None, False)


def test_an_unknown_tag_of_reid_tiny_lists_the_shipped_one():
    with pytest.raises(UserError, match="neither a weights file nor a tag of model 'reid-tiny' \\(its tags: synthetic\\)"):
        resolve_pretrained(TrainConfig(pretrained="synthetc"))


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "nothing to do; pass --out FILE"),
        (["--out", "w.pt"], "must end in .safetensors"),
        (["--out", "x.safetensors", "--steps", "0"], "--steps is 0, but must be >= 1"),
        (["--out", "x.safetensors", "--batch-size", "4000"], "--batch-size is 4000, but must be in \\[2, --identities\\]"),
    ],
)
def test_bad_pretrain_flags_are_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_shipped_weights_at_another_image_size_are_one_line_naming_the_fix():
    """Their 8x4 position grid is not square, which open_clip cannot resize: say so, not a shape error."""
    with pytest.raises(UserError, match="shipped 'synthetic' weights of reid-tiny are for 64x32 images, not 128x64 .*pretrained=none"):
        resolve_pretrained(TrainConfig(image_size=(128, 64)))
    assert build_model(TrainConfig(image_size=(128, 64), pretrained=None), num_classes=10) is not None
