"""Tiny data sets on disk in each format the loaders read, written with PIL into a test's temp folder.

Each identity has its own colours (shirt, trousers, background), so a few steps of training are
real training; the files are 48x24 pixels, so loading also resizes them to the config's size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "grey", "purple", "orange", "pink"]
FILE_SIZE = (48, 24)  # height, width of the written images


def person_image(pid: int, shot: int) -> Image.Image:
    """An identity's colours with a per-shot shift and noise: (H, W) = FILE_SIZE."""
    rng = np.random.default_rng(1000 * pid + shot)
    h, w = FILE_SIZE
    palette = np.random.default_rng(pid).integers(0, 256, size=(3, 3))
    image = np.empty((h, w, 3), np.float64)
    image[:] = palette[0]
    top = 2 + shot % 3
    image[top : top + h // 2, w // 4 : 3 * w // 4] = palette[1]  # shirt
    image[top + h // 2 : h - 2, w // 4 : 3 * w // 4] = palette[2]  # trousers
    image += rng.normal(0, 8, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def caption(pid: int, variant: int) -> str:
    shirt, trousers = COLOURS[pid % len(COLOURS)], COLOURS[(3 * pid + 1) % len(COLOURS)]
    return [f"A person in a {shirt} shirt and {trousers} trousers.", f"The {shirt} top goes with {trousers} pants."][variant % 2]


def caption_records(
    root: Path, splits: dict[str, list[int]], per_id: int = 3, image_key: str = "file_path", captions: int = 2, prefix: str = ""
) -> list[dict]:
    """Write ``root/imgs/<split>/<pid>_<shot>.jpg`` and return CUHK-PEDES-style records for them."""
    records = []
    for split, pids in splits.items():
        for pid in pids:
            for shot in range(per_id):
                rel = f"{prefix}{split}/{pid:04d}_{shot}.jpg"
                (root / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
                person_image(pid, shot).save(root / "imgs" / rel, quality=95)
                records.append(
                    {"split": split, "id": pid, image_key: rel, "captions": [caption(pid, v) for v in range(captions)]}
                )
    return records


def write_json(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


TRAIN_IDS, VAL_IDS, TEST_IDS = [11, 12, 13, 14, 15], [21, 22], [31, 32, 33]


def write_cuhk(root: Path) -> Path:
    """CUHK-PEDES: reid_raw.json, train/val/test, two captions per image, ids with gaps."""
    return write_json(root / "reid_raw.json", caption_records(root, {"train": TRAIN_IDS, "val": VAL_IDS, "test": TEST_IDS}))


def write_icfg(root: Path) -> Path:
    """ICFG-PEDES: ICFG-PEDES.json, train/test only, one caption per image."""
    records = caption_records(root, {"train": TRAIN_IDS, "test": TEST_IDS}, captions=1)
    return write_json(root / "ICFG-PEDES.json", records)


def write_rstp(root: Path) -> Path:
    """RSTPReid: data_captions.json with img_path instead of file_path."""
    records = caption_records(root, {"train": TRAIN_IDS, "val": VAL_IDS, "test": TEST_IDS}, image_key="img_path")
    return write_json(root / "data_captions.json", records)


# Market-1501: (pid, camera) per image; -1 is junk, 0 a distractor.
MARKET_TRAIN = [(pid, cam) for pid in (2, 7, 9, 40) for cam in (1, 2, 3)]
MARKET_QUERY = [(101, 1), (102, 2), (103, 1)]
MARKET_GALLERY = [(101, 1), (101, 2), (101, 3), (102, 1), (102, 2), (103, 3), (0, 1), (-1, 2), (-1, 1)]


def write_market(root: Path) -> Path:
    """bounding_box_train/, query/, bounding_box_test/ with 0002_c1s1_000451_03.jpg style names."""
    for folder, entries in (
        ("bounding_box_train", MARKET_TRAIN),
        ("query", MARKET_QUERY),
        ("bounding_box_test", MARKET_GALLERY),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for shot, (pid, cam) in enumerate(entries):
            name = f"{pid:04d}_c{cam}s1_{shot:06d}_01.jpg" if pid >= 0 else f"-1_c{cam}s1_{shot:06d}_01.jpg"
            person_image(max(pid, 0) + 500, shot).save(root / folder / name, quality=95)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")  # ignored: not an image suffix
    return root


def write_cuhk_people(root: Path, identities: int = 40, per_id: int = 4, permuted: bool = False) -> Path:
    """A CUHK-PEDES-layout set large enough to train on: ``identities`` train ids of ``per_id`` images each (ids
    from 100), 5 test ids. ``permuted``: the training ids permuted among the training images once (seeded), as an
    annotation join gone wrong leaves them: every image keeps one wrong id, the same at every visit."""
    train_ids = list(range(100, 100 + identities))
    records = caption_records(root, {"train": train_ids, "test": list(range(900, 905))}, per_id=per_id, captions=1)
    if permuted:
        train = [r for r in records if r["split"] == "train"]
        ids = [r["id"] for r in train]
        for record, pid in zip(train, np.random.default_rng(5).permutation(ids).tolist()):
            record["id"] = pid
    return write_json(root / "reid_raw.json", records)
