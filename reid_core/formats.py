"""Data sets on disk: find them, read their annotations, and check them before any training.

Two families:

- caption data sets, one JSON list of records ``{"id", "split", "captions", "file_path" | "img_path"}``:
  CUHK-PEDES (``reid_raw.json``), ICFG-PEDES (``ICFG-PEDES.json``) and RSTPReid
  (``data_captions.json``); image paths are relative to ``imgs/`` beside the
  annotation file (or to its folder when there is no ``imgs/``);
- Market-1501 style folders (``bounding_box_train/``, ``query/``,
  ``bounding_box_test/``), identity and camera in the file name
  (``0002_c1s1_000451_03.jpg``: identity 2, camera 1); identity -1 is junk and
  is left out, identity 0 (distractors) stays in the gallery.

A reader returns one `SplitIndex` per split it was asked for: file paths, raw
identity ids and captions or cameras. `check_index` then looks at everything a
run will read: empty splits, identities shared by splits that must be disjoint,
missing files and files that are not images, each a one-line `UserError` that
says what and where.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from PIL import Image, UnidentifiedImageError

from reid_core.errors import UserError

# The annotation file each caption format ships with.
ANNOTATION_FILES = {"cuhk-pedes": "reid_raw.json", "icfg-pedes": "ICFG-PEDES.json", "rstpreid": "data_captions.json"}
IMAGE_KEYS = ("file_path", "img_path")  # CUHK-PEDES and ICFG-PEDES say file_path, RSTPReid img_path
JSON_SPLITS = ("train", "val", "test")
MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "test": "bounding_box_test"}
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")  # 0002_c1s1_000451_03.jpg: identity 2, camera 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
JUNK_PID = -1  # Market-1501: detections too poor to count as anyone
SHOW = 3  # paths named in an error before "..."


@dataclass
class SplitIndex:
    """One split as files on disk, before anything is decoded."""

    paths: list[Path]  # image files
    pids: list[int]  # raw identity id of each image
    captions: Optional[list[list[str]]] = None  # captions of each image; None for image-only data sets
    camids: Optional[list[int]] = None  # camera of each image (image ReID), else None


# --- finding the data set and its format ------------------------------------------------------


def find_annotation(path: Path, fmt: Optional[str] = None) -> Optional[Path]:
    """The JSON annotation file of a caption data set: ``path`` itself, the format's own file
    name in the folder, any known one, or the folder's only ``*.json``."""
    if path.is_file():
        return path if path.suffix.lower() == ".json" else None
    if not path.is_dir():
        return None
    names = [ANNOTATION_FILES[fmt]] if fmt in ANNOTATION_FILES else []
    names += [n for n in ANNOTATION_FILES.values() if n not in names]
    for name in names:
        if (path / name).is_file():
            return path / name
    candidates = sorted(path.glob("*.json"))
    return candidates[0] if len(candidates) == 1 else None


def detect(path: Path) -> Optional[str]:
    """The format of the data set at ``path`` from what is there, or None."""
    if path.is_dir() and (path / MARKET_FOLDERS["train"]).is_dir():
        return "market1501"
    annotation = find_annotation(path)
    if annotation is None:
        return None
    records = read_json(annotation)
    if isinstance(records, list) and not records:
        raise UserError(f"annotation file '{annotation}' is empty (no records); point --data at a filled data set")
    first = records[0] if isinstance(records, list) and records and isinstance(records[0], dict) else {}
    if "img_path" in first:
        return "rstpreid"
    if "file_path" in first:
        return "icfg-pedes" if "icfg" in annotation.name.lower() else "cuhk-pedes"
    return None


@functools.lru_cache(maxsize=4)
def _read_json_cached(path: str, mtime_ns: int) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0]
        raise UserError(f"cannot parse annotation file '{path}': {first}; fix the JSON") from None


def read_json(path: Path) -> Any:
    """Parsed JSON, read once per process while the file is unchanged (detection and loading share it)."""
    return _read_json_cached(str(path), path.stat().st_mtime_ns)


# --- caption data sets (JSON) --------------------------------------------------------------------


def read_caption_json(path: Path, fmt: str, splits: tuple[str, ...]) -> tuple[dict[str, SplitIndex], str]:
    """Read a CUHK-PEDES / ICFG-PEDES / RSTPReid annotation; returns the asked ``splits`` and
    where they came from (the annotation file's name, for messages)."""
    annotation = find_annotation(path, fmt)
    if annotation is None:
        expected = ANNOTATION_FILES[fmt]
        raise UserError(
            f"{fmt} data set '{path}' has no annotation file: expected {expected} (or one .json file) in that folder"
        )
    records = read_json(annotation)
    where = annotation.name
    if not isinstance(records, list) or not records:
        raise UserError(f"annotation file '{annotation}' must hold a non-empty list of records, one per image")
    root = annotation.parent / "imgs" if (annotation.parent / "imgs").is_dir() else annotation.parent
    out = {name: SplitIndex([], [], captions=[]) for name in splits}
    seen_splits: dict[str, int] = {}
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"record {number} of {where} is a {type(record).__name__}, not a mapping of fields")
        image = next((record[k] for k in IMAGE_KEYS if record.get(k)), None)
        if not isinstance(image, str):
            raise UserError(
                f"record {number} of {where} has no image ({' or '.join(IMAGE_KEYS)}): every annotation needs "
                "its image file; fix or drop the record"
            )
        split = record.get("split")
        if split not in JSON_SPLITS:
            raise UserError(f"record {number} of {where} ({image}) has split {split!r}; expected one of {', '.join(JSON_SPLITS)}")
        seen_splits[split] = seen_splits.get(split, 0) + 1
        pid = _integer_id(record.get("id"))
        if pid is None:
            raise UserError(f"record {number} of {where} ({image}) has id {record.get('id')!r}; expected an integer identity id")
        captions = record.get("captions")
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise UserError(f"record {number} of {where} ({image}) has no captions; expected a list of sentences")
        if split in out:
            out[split].paths.append(root / image)
            out[split].pids.append(pid)
            out[split].captions.append([c.strip() for c in captions])
    _check_not_empty(out, where, seen_splits)
    return out, where


def _integer_id(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


# --- Market-1501 style folders -------------------------------------------------------------------


def read_market(path: Path, splits: tuple[str, ...]) -> tuple[dict[str, SplitIndex], str]:
    """Read ``bounding_box_train/``, ``query/``, ``bounding_box_test/``; junk (identity -1) is left out."""
    out: dict[str, SplitIndex] = {}
    for split in splits:
        if split not in MARKET_FOLDERS:
            raise UserError(
                f"market1501 data sets have no '{split}' split (they have {', '.join(MARKET_FOLDERS)}); "
                "use eval_split=test"
            )
        folder = path / MARKET_FOLDERS[split]
        if not folder.is_dir():
            raise UserError(f"market1501 data set '{path}' has no {MARKET_FOLDERS[split]}/ folder")
        index = SplitIndex([], [], camids=[])
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue  # Thumbs.db and friends
            match = MARKET_NAME.match(file.name)
            if match is None:
                raise UserError(
                    f"cannot read identity and camera from '{MARKET_FOLDERS[split]}/{file.name}': "
                    "Market-1501 names look like 0002_c1s1_000451_03.jpg (identity 2, camera 1)"
                )
            pid, camid = int(match.group(1)), int(match.group(2))
            if pid == JUNK_PID:
                continue
            index.paths.append(file)
            index.pids.append(pid)
            index.camids.append(camid)
        out[split] = index
    for split, index in out.items():
        if not index.paths:
            raise UserError(
                f"the {split} split of '{path}' is empty: {MARKET_FOLDERS[split]}/ holds no images "
                "(junk, identity -1, does not count)"
            )
    return out, f"'{path}'"


# --- checks made before any training ------------------------------------------------------------


def _check_not_empty(index: dict[str, SplitIndex], where: str, seen: dict[str, int]) -> None:
    for split, part in index.items():
        if not part.paths:
            have = ", ".join(f"{name}: {count} images" for name, count in seen.items()) or "none"
            fix = "use eval_split=test" if split == "val" else "fix the records' 'split' fields"
            raise UserError(f"the {split} split of {where} is empty (splits there: {have}); {fix}")


def check_index(index: dict[str, SplitIndex], where: str, disjoint: tuple[tuple[str, str], ...]) -> None:
    """Raise a one-line `UserError` for identities shared by splits that must be disjoint,
    missing files or files that are not images."""
    for a, b in disjoint:
        shared = sorted(set(index[a].pids) & set(index[b].pids))
        if shared:
            ids = ", ".join(map(str, shared[:SHOW])) + (", ..." if len(shared) > SHOW else "")
            raise UserError(
                f"{_count(len(shared), 'identity', 'identities')} of the {b} split of {where} also in the {a} split "
                f"({ids}); {b} identities must be unseen in training: fix the splits"
            )
    files = [p for part in index.values() for p in part.paths]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(files)} images of {where} are missing: {_first(missing)}; fix the paths or put "
            "the images there (a JSON annotation's paths are relative to imgs/ beside it, or to its folder)"
        )
    unreadable = [p for p in files if not _readable(p)]
    if unreadable:
        raise UserError(
            f"{len(unreadable)} of {len(files)} images of {where} are not readable images: {_first(unreadable)}; "
            "replace or remove them"
        )


def _readable(path: Path) -> bool:
    """PIL recognises the file (the header only: decoding every image would cost minutes on a real data set)."""
    try:
        with Image.open(path) as image:
            image.size
        return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _first(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:SHOW])
    return shown + (", ..." if len(paths) > SHOW else "")
