"""The held-out slice (never trained on) and the unseen-image CE measured on it (`reid_core.unseen`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reid_core.config import TrainConfig
from reid_core.data import load_data
from reid_core.trainer import Trainer
from reid_core.unseen import UNSEEN_BATCH, UnseenCE, fixed_batch, held_out
from tests.reid_core import tiny_datasets as tiny

CONTEXT = 77


def test_one_image_of_each_identity_with_enough_images_is_held_out():
    pids = np.array([5] * 4 + [7] * 2 + [9] * 3 + [3] * 5)
    chosen = held_out(pids, per_id=1, min_images=3)
    assert list(chosen) == sorted(chosen)
    assert sorted(pids[chosen].tolist()) == [3, 5, 9]  # 7 has two images: it keeps both
    two = held_out(pids, per_id=2, min_images=4)
    assert sorted(pids[two].tolist()) == [3, 3, 5, 5]
    assert len(held_out(pids, per_id=0, min_images=3)) == 0


def test_the_slice_is_the_same_in_every_process_and_for_every_training_seed():
    pids = np.repeat(np.arange(50), 6)
    assert np.array_equal(held_out(pids, 1, 3), held_out(pids.copy(), 1, 3))
    a = load_data(TrainConfig(synthetic_identities=20, seed=0), CONTEXT)
    b = load_data(TrainConfig(synthetic_identities=20, seed=3), CONTEXT)
    assert torch.equal(a.unseen.images, b.unseen.images) and torch.equal(a.train.images, b.train.images)


def test_the_fixed_batch_spreads_over_identities():
    assert list(fixed_batch(10)) == list(range(10))
    picked = fixed_batch(400)
    assert len(picked) == UNSEEN_BATCH and len(set(picked.tolist())) == UNSEEN_BATCH


def test_held_out_images_are_never_in_the_training_stream_of_a_market_folder(tmp_path):
    root = tiny.write_market(tmp_path / "market")
    data = load_data(TrainConfig(data=str(root), batch_size=4, device="cpu"), CONTEXT)
    # 4 identities x 3 cameras: one image each held out, with its camera; the others train
    assert len(data.train) == 8 and len(data.unseen) == 4 and len(data.unseen.camids) == 4
    assert not set(data.unseen.paths) & set(data.train.paths)
    assert data.num_classes == 4


def test_a_set_with_too_few_images_per_identity_holds_none_out_and_says_so():
    data = load_data(TrainConfig(synthetic_identities=20, synthetic_images_per_identity=2, batch_size=8), CONTEXT)
    assert data.unseen is None and len(data.train) == 40
    assert any("no training identity has 3 images: none held out" in note for note in data.notes)


def test_holdout_off_keeps_every_image_and_reports_no_unseen_ce():
    cfg = TrainConfig(synthetic_identities=20, batch_size=8, max_steps=2, holdout_per_id=0, device="cpu")
    trainer = Trainer(cfg)
    assert trainer.data.unseen is None and len(trainer.data.train) == 160
    assert "unseen_ce" not in trainer.train_step()


def test_unseen_ce_is_measured_every_unseen_every_steps_without_touching_training():
    cfg = TrainConfig(synthetic_identities=20, batch_size=8, max_steps=6, unseen_every=3, device="cpu")
    with_it, without = Trainer(cfg), Trainer(cfg)
    without.unseen = None
    rows = [with_it.train_step() for _ in range(6)]
    plain = [without.train_step() for _ in range(6)]
    assert [r["ce"] for r in rows] == [r["ce"] for r in plain]  # the same curve: eval mode, no grad, no RNG
    assert torch.equal(with_it.model.bnneck.running_mean, without.model.bnneck.running_mean)
    unseen = [r["unseen_ce"] for r in rows]
    assert math.isnan(unseen[0]) and math.isnan(unseen[1])  # before the first measurement
    assert unseen[2] == unseen[3] == unseen[4] != unseen[5]  # measured at 3 and 6, repeated between
    assert with_it.model.training


def test_unseen_ce_survives_a_resume():
    cfg = TrainConfig(synthetic_identities=20, batch_size=8, max_steps=6, unseen_every=2, device="cpu")
    trainer = Trainer(cfg)
    measured = [trainer.train_step()["unseen_ce"] for _ in range(2)][-1]  # measured at step 2
    resumed = Trainer(cfg)
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.train_step()["unseen_ce"] == measured  # step 3 repeats it, as the run it continues would


@pytest.mark.parametrize(
    "images, labels, every, message",
    [
        (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0, "every=0"),
        (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), True, "every=True"),
        (torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), 5, "2 images and 3 labels"),
    ],
)
def test_unseen_ce_rejects_bad_arguments(images, labels, every, message):
    with pytest.raises(ValueError, match=message):
        UnseenCE(images, labels, every)
