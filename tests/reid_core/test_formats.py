"""Data sets on disk: each format is detected, loaded with its ids remapped, batched, and trains end to end;
every bad data set stops before training with one line and exit code 2.

The data sets are tiny (a few identities, 48x24 JPEGs) and written into each test's temp folder.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Callable

import pytest
import torch

from reid_core.config import TrainConfig
from reid_core.data import batches, detect_format, load_data, normalise, read_image
from reid_core.errors import UserError
from reid_core.train import main
from tests.reid_core import tiny_datasets as tiny
from tests.reid_core.test_cli import check_one_line_error, read_rows, run_main

CONTEXT = 32  # reid-tiny's caption length
WRITERS: dict[str, Callable[[Path], Path]] = {
    "cuhk-pedes": tiny.write_cuhk,
    "icfg-pedes": tiny.write_icfg,
    "rstpreid": tiny.write_rstp,
    "market1501": tiny.write_market,
}
FAST = ["batch_size=4", "threads=1", "device=cpu"]


def cfg_for(path: Path, **changes) -> TrainConfig:
    return TrainConfig(data=str(path), batch_size=4, threads=1, device="cpu", **changes)


@pytest.fixture(scope="module")
def data_sets(tmp_path_factory) -> dict[str, Path]:
    """One tiny data set per format, written once for the module (reading them never changes them)."""
    root = tmp_path_factory.mktemp("data_sets")
    return {fmt: write(root / fmt) and root / fmt for fmt, write in WRITERS.items()}


# --- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", WRITERS)
def test_format_is_detected_from_the_folder(fmt, data_sets):
    assert detect_format(cfg_for(data_sets[fmt])) == fmt


@pytest.mark.parametrize(
    "fmt, annotation", [("cuhk-pedes", "reid_raw.json"), ("icfg-pedes", "ICFG-PEDES.json"), ("rstpreid", "data_captions.json")]
)
def test_format_is_detected_from_the_annotation_file(fmt, annotation, data_sets):
    assert detect_format(cfg_for(data_sets[fmt] / annotation)) == fmt


def test_an_unusual_annotation_name_is_read_by_its_record_keys(tmp_path):
    """Liberal: the folder's only .json, recognised by the keys of its first record (img_path: RSTPReid)."""
    tiny.write_rstp(tmp_path)
    (tmp_path / "data_captions.json").rename(tmp_path / "my_captions.json")
    assert detect_format(cfg_for(tmp_path)) == "rstpreid"
    assert load_data(cfg_for(tmp_path), CONTEXT).num_classes == len(tiny.TRAIN_IDS)


def test_format_named_explicitly(data_sets):
    assert detect_format(cfg_for(data_sets["icfg-pedes"], data_format="cuhk-pedes")) == "cuhk-pedes"


def test_unknown_format_name_lists_the_known_ones(data_sets):
    with pytest.raises(UserError, match="unknown data format 'cuhk'; known: synthetic, cuhk-pedes, icfg-pedes, rstpreid, market1501"):
        detect_format(cfg_for(data_sets["cuhk-pedes"], data_format="cuhk"))


# --- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["cuhk-pedes", "icfg-pedes", "rstpreid"])
def test_caption_formats_load_and_remap_ids(fmt, data_sets):
    data = load_data(cfg_for(data_sets[fmt]), CONTEXT)
    per_id, captions = 3, 1 if fmt == "icfg-pedes" else 2
    assert data.name == fmt and data.task == "text-to-image" and data.query is None
    assert data.num_classes == len(tiny.TRAIN_IDS)  # derived from the training split
    raw_sorted = sorted(tiny.TRAIN_IDS)
    assert [raw_sorted[label] for label in data.labels.tolist()] == data.train.pids.tolist()
    assert sorted(set(data.labels.tolist())) == list(range(len(tiny.TRAIN_IDS)))
    # one image of each identity held out (holdout_per_id=1, each has 3 >= holdout_min_images), with its captions
    assert data.train.images is None and len(data.train.paths) == len(tiny.TRAIN_IDS) * (per_id - 1)
    assert data.train.tokens.shape == (len(tiny.TRAIN_IDS) * (per_id - 1) * captions, CONTEXT)
    assert sorted(data.unseen.pids.tolist()) == sorted(tiny.TRAIN_IDS) and not set(data.unseen.paths) & set(data.train.paths)
    assert [raw_sorted[label] for label in data.unseen_labels.tolist()] == data.unseen.pids.tolist()
    # every caption is a text query of the test split, with its image's identity
    assert set(data.gallery.pids.tolist()) == set(tiny.TEST_IDS)
    assert data.gallery.tokens.shape == (len(tiny.TEST_IDS) * per_id * captions, CONTEXT)
    assert data.gallery.caption_pids.tolist() == [pid for pid in data.gallery.pids.tolist() for _ in range(captions)]


def test_eval_split_val(data_sets):
    data = load_data(cfg_for(data_sets["cuhk-pedes"], eval_split="val"), CONTEXT)
    assert set(data.gallery.pids.tolist()) == set(tiny.VAL_IDS)


def test_market_loads_cameras_and_leaves_junk_out(data_sets):
    data = load_data(cfg_for(data_sets["market1501"]), CONTEXT)
    assert data.task == "image-to-image" and not data.has_captions
    assert data.num_classes == 4 and sorted(set(data.train.pids.tolist())) == [2, 7, 9, 40]
    assert data.query.pids.tolist() == [101, 102, 103] and data.query.camids.tolist() == [1, 2, 1]
    kept = [(pid, cam) for pid, cam in tiny.MARKET_GALLERY if pid != -1]  # -1 is junk; 0 (distractor) stays
    assert sorted(zip(data.gallery.pids.tolist(), data.gallery.camids.tolist())) == sorted(kept)
    assert any("no captions: SDM is off" in note for note in data.notes)


def test_images_are_decoded_resized_and_normalised(data_sets):
    path = sorted((data_sets["market1501"] / "query").iterdir())[0]
    image = read_image(str(path), (64, 32))
    assert image.shape == (3, 64, 32) and image.dtype == torch.uint8
    assert normalise(image[None]).dtype == torch.float32


# --- the micro-batch stream from files ----------------------------------------------------------


def take(stream, n):
    return list(itertools.islice(stream, n))


@pytest.fixture(scope="module")
def cuhk(data_sets):
    return load_data(cfg_for(data_sets["cuhk-pedes"], holdout_per_id=0), CONTEXT)  # the stream of all 15 images


def test_stream_from_files_is_the_same_with_workers(cuhk):
    """Every random choice is made in the training process: a worker process changes nothing."""
    cpu = torch.device("cpu")
    in_process = take(batches(cuhk, 4, 7, cpu, workers=0), 5)
    with_worker = take(batches(cuhk, 4, 7, cpu, workers=1), 5)
    for a, b in zip(in_process, with_worker):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(in_process[0][1], take(batches(cuhk, 4, 8, cpu), 1)[0][1])  # another seed, another order


def test_stream_from_files_pairs_images_with_their_labels_flips_and_captions(cuhk):
    """Each yielded image is one of the split's files (maybe mirrored), its label is its identity and its
    caption one of that image's two; over a few epochs both captions and both orientations occur."""
    originals = [normalise(read_image(p, (64, 32))[None])[0] for p in cuhk.train.paths]
    flipped, rows_used = 0, set()
    n = len(cuhk.train)
    for images, labels, tokens in take(batches(cuhk, 5, 0, torch.device("cpu")), 3 * n // 5):
        for image, label, token in zip(images, labels, tokens):
            plain = [j for j, o in enumerate(originals) if torch.equal(o, image)]
            mirror = [j for j, o in enumerate(originals) if torch.equal(o.flip(-1), image)]
            j = (plain or mirror)[0]
            flipped += not plain
            assert int(label) == int(cuhk.labels[j])
            rows = (cuhk.train.caption_image == j).nonzero().flatten().tolist()
            row = next(r for r in rows if torch.equal(cuhk.train.tokens[r], token))
            rows_used.add(row)
    assert 0 < flipped < 3 * n
    assert len(rows_used) > n  # more than one caption per image gets used


def test_each_epoch_from_files_sees_every_image_once(cuhk):
    n = len(cuhk.train)  # 15 images, batches of 5: three per epoch
    labels = [lab for _, lab, _ in take(batches(cuhk, 5, 0, torch.device("cpu")), 6)]
    assert torch.equal(torch.cat(labels[:3]).sort().values, cuhk.labels.sort().values)
    assert torch.equal(torch.cat(labels[3:]).sort().values, cuhk.labels.sort().values)
    assert n == 15


# --- end to end with the plain job ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", WRITERS)
def test_each_format_trains_end_to_end(fmt, data_sets, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data", str(data_sets[fmt]), "--set", *FAST, "max_steps=3", "ce_only_steps=1", "sdm_ramp_steps=1"]
    assert main([*argv, "--out", str(out), "--log-every", "1000"]) == 0
    rows = read_rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(r["ce_ema"])) for r in rows)
    classes = 4 if fmt == "market1501" else len(tiny.TRAIN_IDS)
    assert float(rows[-1]["chance_ce"]) == pytest.approx(math.log(classes))
    assert all(0 <= float(rows[-1][k]) <= 100 for k in ("val_r1", "val_r5", "val_r10", "val_map", "val_minp"))
    summary = json.loads((out / "summary.json").read_text())
    stdout = capsys.readouterr().out
    if fmt == "market1501":
        assert [float(r["sdm_weight"]) for r in rows] == [0.0, 0.0, 0.0]  # no captions, no SDM
        assert stdout.count("no captions: SDM is off") == 1  # said once
        assert summary["task"] == "image-to-image" and "image-to-image R@1" in stdout
    else:
        assert float(rows[-1]["sdm_weight"]) == 1.0 and float(rows[-1]["sdm"]) > 0
        assert summary["task"] == "text-to-image" and "SDM is off" not in stdout


# --- bad data sets: one line, exit 2, nothing written ---------------------------------------------


def cuhk_records(root: Path) -> list[dict]:
    tiny.write_cuhk(root)
    return json.loads((root / "reid_raw.json").read_text())


def missing_images(root: Path) -> Path:
    tiny.write_cuhk(root)
    for name in ("0011_0.jpg", "0011_1.jpg", "0012_0.jpg", "0012_1.jpg"):
        (root / "imgs" / "train" / name).unlink()
    return root


def unreadable_image(root: Path) -> Path:
    tiny.write_cuhk(root)
    (root / "imgs" / "test" / "0031_2.jpg").write_bytes(b"<html>404 not found</html>")
    return root


def no_images_folder(root: Path) -> Path:
    tiny.write_cuhk(root)
    (root / "imgs").rename(root / "pictures")
    return root


def empty_eval_split(root: Path) -> Path:
    tiny.write_icfg(root)
    return root


def empty_train_split(root: Path) -> Path:
    records = [r for r in cuhk_records(root) if r["split"] != "train"]
    return tiny.write_json(root / "reid_raw.json", records).parent


def annotation_without_image(root: Path) -> Path:
    records = cuhk_records(root)
    del records[4]["file_path"]
    return tiny.write_json(root / "reid_raw.json", records).parent


def id_in_two_splits(root: Path) -> Path:
    records = cuhk_records(root)
    for r in records:
        if r["split"] == "test" and r["id"] == 31:
            r["id"] = 12  # a training identity
    return tiny.write_json(root / "reid_raw.json", records).parent


def record_without_captions(root: Path) -> Path:
    records = cuhk_records(root)
    records[2]["captions"] = []
    return tiny.write_json(root / "reid_raw.json", records).parent


def broken_json(root: Path) -> Path:
    tiny.write_cuhk(root)
    (root / "reid_raw.json").write_text('[{"split": "train",')
    return root


def market_without_query(root: Path) -> Path:
    tiny.write_market(root)
    for f in (root / "query").iterdir():
        f.unlink()
    (root / "query").rmdir()
    return root


def market_empty_query(root: Path) -> Path:
    tiny.write_market(root)
    for f in (root / "query").iterdir():
        f.unlink()
    return root


def market_train_id_in_gallery(root: Path) -> Path:
    tiny.write_market(root)
    tiny.person_image(7, 0).save(root / "bounding_box_test" / "0007_c4s1_000100_01.jpg")
    return root


def market_bad_name(root: Path) -> Path:
    tiny.write_market(root)
    tiny.person_image(7, 0).save(root / "bounding_box_train" / "person7.jpg")
    return root


# (writer given an empty folder -> the --data path, extra argv, a fragment the one stderr line must hold)
BAD_DATA = {
    "missing images": (missing_images, [], r"4 of 24 images of reid_raw.json are missing: .*imgs/train/0011_0.jpg, .*0011_1.jpg, .*0012_0.jpg, \.\.\."),
    "unreadable image": (unreadable_image, [], r"1 of 24 images of reid_raw.json are not readable images: .*test/0031_2.jpg; replace or remove them"),
    "no images folder": (no_images_folder, [], r"24 of 24 images of reid_raw.json are missing: .*data/train/0011_0.jpg.* relative to imgs/ beside it"),
    "empty eval split": (empty_eval_split, ["eval_split=val"], r"the val split of ICFG-PEDES.json is empty \(splits there: train: 15 images, test: 9 images\); use eval_split=test"),
    "empty train split": (empty_train_split, [], r"the train split of reid_raw.json is empty"),
    "annotation without image": (annotation_without_image, [], r"record 4 of reid_raw.json has no image \(file_path or img_path\)"),
    "id in two splits": (id_in_two_splits, [], r"1 identity of the test split of reid_raw.json also in the train split \(12\); test identities must be unseen"),
    "record without captions": (record_without_captions, [], r"record 2 of reid_raw.json \(train/0011_2.jpg\) has no captions"),
    "broken JSON": (broken_json, [], r"cannot parse annotation file '.*reid_raw.json'"),
    "market without query/": (market_without_query, [], r"market1501 data set '.*' has no query/ folder"),
    "market empty query/": (market_empty_query, [], r"the query split of '.*' is empty: query/ holds no images"),
    "market train id in gallery": (market_train_id_in_gallery, [], r"1 identity of the test split of '.*' also in the train split \(7\)"),
    "market bad file name": (market_bad_name, [], r"cannot read identity and camera from 'bounding_box_train/person7.jpg'"),
    "market has no val": (tiny.write_market, ["eval_split=val"], r"market1501 data sets have no 'val' split"),
    "unknown format name": (tiny.write_cuhk, ["data_format=cuhk"], r"unknown data format 'cuhk'; known: synthetic, cuhk-pedes, icfg-pedes, rstpreid, market1501"),
    "nothing recognisable": (lambda root: root.mkdir() or root, [], r"cannot read data set '.*': no loader recognises it"),
    "no such path": (lambda root: root / "nope", [], r"data set '.*nope' does not exist"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_set_stops_before_training(case, tmp_path, capsys):
    write, extra, fragment = BAD_DATA[case]
    path = write(tmp_path / "data")
    out = tmp_path / "run"
    code = run_main(["--data", str(path), "--set", *FAST, *extra, "--out", str(out)])
    check_one_line_error(code, capsys.readouterr().err, fragment, out)
