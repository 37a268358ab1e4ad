"""Label remapping, the label range check, the synthetic data set and the micro-batch stream."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from reid_core.data import batches, check_labels, load_data, normalise, remap_ids
from reid_core.errors import UserError
from reid_core.synthetic import make_synthetic

CONTEXT = 32  # reid-tiny's caption length


@pytest.mark.parametrize(
    "raw, labels, unique",
    [
        ([1007, 1000, 1014, 1000], [1, 0, 2, 0], [1000, 1007, 1014]),
        ([5, 5, 5], [0, 0, 0], [5]),
        ([-1, 3, 0, 3], [0, 2, 1, 2], [-1, 0, 3]),  # sorted order, negatives too
        ([10**9, 2, 10**6], [2, 0, 1], [2, 10**6, 10**9]),  # gaps disappear
        (["0002", "0001", "0002"], [1, 0, 1], ["0001", "0002"]),  # string ids sort as strings
    ],
)
def test_remap_ids_to_contiguous_sorted(raw, labels, unique):
    got_labels, got_unique = remap_ids(np.array(raw))
    assert got_labels.tolist() == labels
    assert got_labels.dtype == torch.int64
    assert got_unique.tolist() == unique


def test_remap_ids_does_not_depend_on_the_order_ids_arrive_in():
    """Every Ray worker must agree on which class an identity is, whatever order it reads the files in."""
    raw = np.array([42, 7, 99, 7, 13, 42])
    perm = np.array([3, 5, 0, 2, 4, 1])
    labels, _ = remap_ids(raw)
    labels_permuted, _ = remap_ids(raw[perm])
    assert labels_permuted.tolist() == labels[perm].tolist()


def test_check_labels_accepts_labels_in_range():
    check_labels(torch.tensor([0, 3, 9]), num_classes=10)
    check_labels(torch.tensor([0, 3]), num_classes=10)  # a wider head than the ids is allowed


def test_check_labels_names_found_and_required_range():
    """The seed's failure: labels [0, 425] with 400 classes."""
    with pytest.raises(UserError, match=r"span \[0, 425\] but num_classes=400 requires \[0, 399\]"):
        check_labels(torch.tensor([0, 17, 425]), num_classes=400)


def test_check_labels_negative_label():
    with pytest.raises(UserError, match=r"span \[-1, 3\]"):
        check_labels(torch.tensor([-1, 3]), num_classes=10)


# --- the synthetic data set ---------------------------------------------------------------


def test_synthetic_is_the_same_for_the_same_seed():
    a_train, a_test = make_synthetic(identities=6, per_identity=2, size=(32, 16), seed=0)
    b_train, b_test = make_synthetic(identities=6, per_identity=2, size=(32, 16), seed=0)
    assert np.array_equal(a_train.images, b_train.images) and a_train.captions == b_train.captions
    assert np.array_equal(a_test.pids, b_test.pids)


def test_synthetic_layout():
    train, test = make_synthetic(identities=12, per_identity=3, size=(32, 16), seed=0)
    assert train.images.shape == (36, 3, 32, 16) and train.images.dtype == np.uint8
    assert len(np.unique(train.pids)) == 12 and len(train.captions) == 36
    assert len(np.unique(test.pids)) == 3  # a quarter more identities for testing
    assert set(train.pids).isdisjoint(test.pids)  # test identities are unseen


def test_load_synthetic_derives_num_classes(small_cfg):
    data = load_data(small_cfg, CONTEXT)
    assert data.num_classes == 20
    assert sorted(set(data.labels.tolist())) == list(range(20))
    # 8 images per identity, one of each held out (holdout_per_id=1): 140 to train on, 20 never trained on
    assert data.train.images.shape == (140, 3, 64, 32)
    assert data.train.tokens.shape == (140, CONTEXT)
    assert data.unseen.images.shape == (20, 3, 64, 32) and sorted(data.unseen_labels.tolist()) == list(range(20))
    # labels follow the sorted raw ids
    raw_sorted = sorted(set(data.train.pids.tolist()))
    assert [raw_sorted[label] for label in data.labels.tolist()] == data.train.pids.tolist()


def test_load_with_wider_head(small_cfg):
    data = load_data(dataclasses.replace(small_cfg, num_classes=32), CONTEXT)
    assert data.num_classes == 32


def test_load_with_too_narrow_head_fails_before_training(small_cfg):
    with pytest.raises(UserError, match=r"span \[0, 19\] but num_classes=10 requires \[0, 9\]"):
        load_data(dataclasses.replace(small_cfg, num_classes=10), CONTEXT)


def test_unknown_data_format_lists_known(small_cfg):
    with pytest.raises(UserError, match="unknown data format 'cuhk'; known: synthetic"):
        load_data(dataclasses.replace(small_cfg, data_format="cuhk"), CONTEXT)


def test_unrecognised_data_path(small_cfg, tmp_path):
    with pytest.raises(UserError, match="cannot read data set .*no loader recognises it"):
        load_data(dataclasses.replace(small_cfg, data=str(tmp_path)), CONTEXT)


def test_batch_larger_than_the_data_set(small_cfg):
    with pytest.raises(UserError, match=r"140 images \(20 more held out: holdout_per_id=1, or 0 to train on them\), fewer than batch_size=200"):
        load_data(dataclasses.replace(small_cfg, batch_size=200), CONTEXT)


# --- the micro-batch stream -----------------------------------------------------------------


@pytest.fixture
def data(small_cfg):
    return load_data(dataclasses.replace(small_cfg, holdout_per_id=0), CONTEXT)  # the stream of all 160 images


def take(stream, n):
    return list(itertools.islice(stream, n))


def test_stream_is_the_same_for_the_same_seed(data):
    cpu = torch.device("cpu")
    for (a_img, a_lab, a_tok), (b_img, b_lab, b_tok) in zip(take(batches(data, 8, 3, cpu), 25), take(batches(data, 8, 3, cpu), 25)):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab) and torch.equal(a_tok, b_tok)


def test_stream_differs_for_another_seed(data):
    cpu = torch.device("cpu")
    a = next(batches(data, 8, 0, cpu))[1]
    b = next(batches(data, 8, 1, cpu))[1]
    assert not torch.equal(a, b)


def test_k_small_batches_are_one_big_batch(data):
    """Gradient accumulation relies on it: 4 micro-batches of 4 are the same images, flips and order as one of 16."""
    cpu = torch.device("cpu")
    big = take(batches(data, 16, 0, cpu), 20)  # 160 images: exactly two epochs
    small = take(batches(data, 4, 0, cpu), 80)
    for i, (img, lab, tok) in enumerate(big):
        parts = small[4 * i : 4 * i + 4]
        assert torch.equal(img, torch.cat([p[0] for p in parts]))
        assert torch.equal(lab, torch.cat([p[1] for p in parts]))
        assert torch.equal(tok, torch.cat([p[2] for p in parts]))


def test_each_epoch_sees_every_image_once_and_reshuffles(data):
    labels = [lab for _, lab, _ in take(batches(data, 8, 0, torch.device("cpu")), 40)]  # two epochs of 20 batches
    first, second = torch.cat(labels[:20]), torch.cat(labels[20:])
    assert torch.equal(first.sort().values, data.labels.sort().values)
    assert torch.equal(second.sort().values, data.labels.sort().values)
    assert not torch.equal(first, second)


def test_stream_labels_and_captions_belong_to_their_images(data):
    """Misaligned labels are one reason a trial sits at chance: find each image and check its label and caption."""
    images, labels, tokens = next(batches(data, 16, 0, torch.device("cpu")))
    originals = normalise(data.train.images)
    for image, label, token in zip(images, labels, tokens):
        same = [(originals[j] - image).abs().max() < 1e-4 or (originals[j].flip(-1) - image).abs().max() < 1e-4 for j in range(len(originals))]
        j = same.index(True)
        assert int(label) == int(data.labels[j])
        assert torch.equal(token, data.train.tokens[j])


def test_stream_flips_some_images(data):
    images, _, _ = next(batches(data, 16, 0, torch.device("cpu")))
    originals = normalise(data.train.images)
    flipped = sum(
        any((originals[j].flip(-1) - image).abs().max() < 1e-4 for j in range(len(originals)))
        and not any((originals[j] - image).abs().max() < 1e-4 for j in range(len(originals)))
        for image in images
    )
    assert 0 < flipped < 16


def test_normalise_is_clip_normalisation():
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalise(white)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    assert torch.allclose(out[0, :, 0, 0], (1 - mean) / std)
    assert out.dtype == torch.float32
