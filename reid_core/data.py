"""Data sets the training loop can batch, and the checks made before training.

Two kinds of split: the built-in synthetic set lives in memory as one uint8
tensor (fast: the default's step time is a measured target), a data set on disk
is a list of image files decoded on demand by DataLoader workers. Both give the
same stream of ``(images, labels, tokens)`` micro-batches, driven by one seeded
generator in the training process, so the order, the flips and the caption each
image is paired with do not depend on the number of workers.

Identity ids are remapped to contiguous ``0..C-1`` in *sorted* order of the raw
ids (never set or hash order: every Ray worker is a separate process and must
agree on which class is which).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from reid_core import formats
from reid_core.config import TrainConfig
from reid_core.errors import UserError
from reid_core.pace import CUDA_WORKERS
from reid_core.synthetic import make_synthetic
from reid_core.unseen import split_off

SYNTHETIC_DATA_SEED = 0  # the synthetic data set is one fixed data set; `seed` varies training only
EVAL_BATCH = 256  # images or captions per forward pass at evaluation


@dataclass
class Split:
    """One split: its images (in memory or as files), identities, captions and cameras."""

    pids: torch.Tensor  # raw identity ids (N,)
    images: Optional[torch.Tensor] = None  # uint8 (N, 3, H, W) held in memory (synthetic), or None
    paths: Optional[list[str]] = None  # image files (N), decoded and resized on demand, when images is None
    tokens: Optional[torch.Tensor] = None  # caption tokens (M, context_length), grouped by image; None = no captions
    caption_image: Optional[torch.Tensor] = None  # image index of each caption (M,), non-decreasing
    camids: Optional[torch.Tensor] = None  # camera of each image (N,), image ReID only

    def __post_init__(self) -> None:
        if self.tokens is not None and self.caption_image is None:  # one caption per image
            self.caption_image = torch.arange(len(self.pids))

    def __len__(self) -> int:
        return len(self.pids)

    @property
    def caption_pids(self) -> torch.Tensor:
        """Identity of each caption: the text queries' ground truth."""
        return self.pids[self.caption_image]


@dataclass
class ReIDData:
    name: str
    train: Split
    gallery: Split  # the evaluated split (cfg.eval_split): its images are the gallery, its captions the text queries
    labels: torch.Tensor  # contiguous training labels 0..C-1 (N_train,)
    num_classes: int  # C, the head's width; chance CE is log(C)
    query: Optional[Split] = None  # image queries against the gallery (image ReID); None = text-to-image retrieval
    notes: list[str] = field(default_factory=list)  # said once at the start of a run
    image_size: tuple[int, int] = (64, 32)  # (height, width) images are decoded at
    unseen: Optional[Split] = None  # held-out images of training identities, never trained on (holdout_per_id); None = none
    unseen_labels: Optional[torch.Tensor] = None  # their contiguous labels, in the head's classes

    @property
    def has_captions(self) -> bool:
        return self.train.tokens is not None

    @property
    def task(self) -> str:
        return "image-to-image" if self.query is not None else "text-to-image"


@dataclass
class Splits:
    """What a format's loader returns: training split, evaluated split, image queries if any."""

    train: Split
    gallery: Split  # the evaluated split (cfg.eval_split)
    query: Optional[Split] = None


def remap_ids(raw_ids: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Map raw ids to ``0..C-1`` in sorted order; returns ``(labels, sorted_unique_raw_ids)``."""
    raw = np.asarray(raw_ids)
    unique = np.unique(raw)  # sorted
    return torch.from_numpy(np.searchsorted(unique, raw)).long(), unique


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Labels must lie in ``[0, num_classes - 1]`` (the seed's failure: [0, 425] with 400 classes)."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise UserError(
            f"identity labels span [{lo}, {hi}] but num_classes={num_classes} requires [0, {num_classes - 1}]; "
            "unset num_classes to derive it from the training split, or fix the annotations"
        )


# --- the synthetic data set ------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _synthetic_tensors(identities: int, per_identity: int, size: tuple[int, int]):
    # Cached per process: Ray reuses actors, so later trials skip the rendering.
    train, test = make_synthetic(identities, per_identity, size, seed=SYNTHETIC_DATA_SEED)
    return train, test


@functools.lru_cache(maxsize=8)
def _tokenize(model: str, context_length: int, captions: tuple[str, ...]) -> torch.Tensor:
    tokenizer = open_clip.get_tokenizer(model, context_length=context_length)
    return tokenizer(list(captions))


def _load_synthetic(cfg: TrainConfig, context_length: int) -> Splits:
    if cfg.eval_split != "test":
        raise UserError(f"the synthetic data set has no '{cfg.eval_split}' split; use eval_split=test")
    train, test = _synthetic_tensors(cfg.synthetic_identities, cfg.synthetic_images_per_identity, tuple(cfg.image_size))
    splits = []
    for part in (train, test):
        tokens = _tokenize(cfg.model, context_length, tuple(part.captions))
        splits.append(Split(torch.from_numpy(part.pids), images=torch.from_numpy(part.images), tokens=tokens))
    return Splits(splits[0], splits[1])


# --- data sets on disk -------------------------------------------------------------------------


def _on_disk_split(index: formats.SplitIndex, model: str, context_length: int) -> Split:
    split = Split(torch.tensor(index.pids, dtype=torch.long), paths=[str(p) for p in index.paths])
    if index.captions is not None:
        flat = tuple(c for captions in index.captions for c in captions)
        split.tokens = _tokenize(model, context_length, flat)
        counts = torch.tensor([len(c) for c in index.captions])
        split.caption_image = torch.repeat_interleave(torch.arange(len(counts)), counts)
    if index.camids is not None:
        split.camids = torch.tensor(index.camids, dtype=torch.long)
    return split


@functools.lru_cache(maxsize=2)
def _read_on_disk(fmt: str, path: str, eval_split: str, model: str, context_length: int, stamp: tuple) -> Splits:
    """Read, check and tokenise once per process while the files are unchanged (``stamp``):
    Ray reuses a worker for the next trial, which then skips the checks and the tokenising."""
    if fmt == "market1501":
        index, where = formats.read_market(Path(path), ("train", "query", eval_split))
        disjoint = (("train", "query"), ("train", eval_split))  # query and gallery share identities by design
    else:
        index, where = formats.read_caption_json(Path(path), fmt, ("train", eval_split))
        disjoint = (("train", eval_split),)
    formats.check_index(index, where, disjoint)
    split = {name: _on_disk_split(part, model, context_length) for name, part in index.items()}
    return Splits(split["train"], split[eval_split], split.get("query"))


def _stamp(path: Path) -> tuple:
    """Modification times that change when the annotation or the split folders do."""
    parts = [path] + ([p for p in path.iterdir() if p.is_dir() or p.suffix == ".json"] if path.is_dir() else [])
    return tuple((str(p), p.stat().st_mtime_ns) for p in parts)


def _on_disk_loader(fmt: str) -> Callable[[TrainConfig, int], Splits]:
    def load(cfg: TrainConfig, context_length: int) -> Splits:
        path = Path(cfg.data).expanduser().resolve()
        return _read_on_disk(fmt, str(path), cfg.eval_split, cfg.model, context_length, _stamp(path))

    load.__name__ = f"load_{fmt}"
    return load


# A registry is a plain dict: the error for an unknown name lists the known ones.
FORMATS: dict[str, Callable[[TrainConfig, int], Splits]] = {
    "synthetic": _load_synthetic,
    "cuhk-pedes": _on_disk_loader("cuhk-pedes"),
    "icfg-pedes": _on_disk_loader("icfg-pedes"),
    "rstpreid": _on_disk_loader("rstpreid"),
    "market1501": _on_disk_loader("market1501"),
}


def detect_format(cfg: TrainConfig) -> str:
    """``cfg.data_format`` when set (checked), else the format recognised from what ``cfg.data`` holds."""
    if cfg.data_format is not None:
        if cfg.data_format not in FORMATS:
            raise UserError(f"unknown data format '{cfg.data_format}'; known: {', '.join(FORMATS)}")
        if (cfg.data == "synthetic") != (cfg.data_format == "synthetic"):
            raise UserError(f"data format '{cfg.data_format}' does not fit data '{cfg.data}'; set both, or unset data_format")
        return cfg.data_format
    if cfg.data == "synthetic":
        return "synthetic"
    path = Path(cfg.data).expanduser()
    if not path.exists():
        raise UserError(f"data set '{cfg.data}' does not exist; pass a data set folder or annotation file, or synthetic")
    fmt = formats.detect(path)
    if fmt is None:
        raise UserError(
            f"cannot read data set '{cfg.data}': no loader recognises it (expected a folder with bounding_box_train/, "
            f"or a JSON annotation such as {', '.join(formats.ANNOTATION_FILES.values())}); "
            f"name the format with data_format, known: {', '.join(FORMATS)}"
        )
    return fmt


def load_data(cfg: TrainConfig, context_length: int) -> ReIDData:
    """Load ``cfg.data``, remap its training ids and check them against ``cfg.num_classes``."""
    fmt = detect_format(cfg)
    splits = FORMATS[fmt](cfg, context_length)
    # the held-out slice (reid_core.unseen): never trained on, the unseen-image CE is measured on it
    train, unseen = split_off(splits.train, cfg.holdout_per_id, cfg.holdout_min_images)
    if len(train) < cfg.batch_size:
        held = f" ({len(unseen)} more held out: holdout_per_id={cfg.holdout_per_id}, or 0 to train on them)" if unseen is not None else ""
        raise UserError(
            f"the training split has {len(train)} images{held}, fewer than batch_size={cfg.batch_size}; "
            "lower batch_size or add data"
        )
    labels, unique = remap_ids(train.pids)
    num_classes = cfg.num_classes if cfg.num_classes is not None else len(unique)
    check_labels(labels, num_classes)
    notes = []
    if train.tokens is None:
        notes.append(
            f"{fmt} has no captions: SDM is off (the text encoder is not trained) and evaluation is "
            "image-to-image (query against gallery, same-identity same-camera gallery images left out)"
        )
    if unseen is None and cfg.holdout_per_id > 0:
        notes.append(f"no training identity has {cfg.holdout_min_images} images: none held out, no unseen_ce (a memorising "
                     "run is not told from a learning one); lower holdout_min_images to hold some out")  # fmt: skip
    return ReIDData(
        fmt, train, splits.gallery, labels, num_classes, query=splits.query, notes=notes, image_size=tuple(cfg.image_size),
        unseen=unseen, unseen_labels=None if unseen is None else torch.from_numpy(np.searchsorted(unique, unseen.pids.numpy())),
    )  # fmt: skip


# --- images -------------------------------------------------------------------------------------

_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255
_STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to CLIP-normalised float, on the images' device."""
    return (images.float() - _MEAN.to(images.device)) / _STD.to(images.device)


def read_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """Decode ``path`` as RGB and resize it to ``size`` (height, width): uint8 (3, H, W)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
    except OSError as err:  # a truncated or corrupt file the header check let through
        raise UserError(f"cannot decode image '{path}': {err}") from None
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def loader_workers(cfg: TrainConfig, device: torch.device) -> int:
    """DataLoader worker processes: ``cfg.loader_workers``, else up to `CUDA_WORKERS` spare CPUs on CUDA, 0 on CPU."""
    if cfg.loader_workers is not None:
        return cfg.loader_workers
    if device.type != "cuda":
        return 0  # on CPU the training step needs the cores; decode between steps
    return max(1, min(CUDA_WORKERS, available_cpus() - 1))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker decodes one image at a time; torch threads would only fight the trainer


class _ImageFiles(torch.utils.data.Dataset):
    """Items are ``(index, flip, caption_row)`` chosen by `_EpochBatches`; returns (image, label, tokens)."""

    def __init__(self, split: Split, labels: Optional[torch.Tensor], size: tuple[int, int]):
        self.paths, self.tokens, self.labels, self.size = split.paths, split.tokens, labels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, bool, int]):
        index, flip, row = item
        image = read_image(self.paths[index], self.size)
        if flip:
            image = image.flip(-1)
        label = self.labels[index] if self.labels is not None else torch.tensor(-1)
        tokens = self.tokens[row] if row >= 0 else torch.zeros(0, dtype=torch.long)
        return image, label, tokens


class _EpochBatches(torch.utils.data.Sampler):
    """Endless batches of ``(index, flip, caption_row)``: reshuffled each epoch, last partial batch dropped.

    Every random choice is made here, in the training process, from one seeded
    generator: the stream is the same whatever the number of workers. An image with
    several captions (CUHK-PEDES has two) is paired with one of them, drawn per visit.
    """

    def __init__(self, split: Split, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = len(split), batch_size, seed
        self.first = self.count = None
        if split.tokens is not None:
            self.count = torch.bincount(split.caption_image, minlength=self.n)
            self.first = torch.cumsum(self.count, 0) - self.count  # first caption row of each image

    def __iter__(self) -> Iterator[list[tuple[int, bool, int]]]:
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            order = torch.randperm(self.n, generator=gen)
            for start in range(0, self.n - self.batch_size + 1, self.batch_size):
                idx = order[start : start + self.batch_size]
                flip = torch.rand(self.batch_size, generator=gen) < 0.5
                rows = torch.full((self.batch_size,), -1)
                if self.count is not None:
                    pick = (torch.rand(self.batch_size, generator=gen) * self.count[idx]).long()
                    rows = self.first[idx] + pick
                yield list(zip(idx.tolist(), flip.tolist(), rows.tolist()))

    def __len__(self) -> int:  # endless; DataLoader only asks for it when asked for its own length
        raise TypeError("the training stream is endless")


def batches(
    data: ReIDData, batch_size: int, seed: int, device: torch.device, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
    """Endless ``(images, labels, tokens)`` micro-batches: reshuffled each epoch, last partial batch dropped,
    random horizontal flip. Driven by one seeded generator, so the stream is the same in every process.
    ``tokens`` is None for a data set without captions."""
    if data.train.images is not None:
        yield from _in_memory_batches(data, batch_size, seed, device)
        return
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        _ImageFiles(data.train, data.labels, data.image_size),
        batch_sampler=_EpochBatches(data.train, batch_size, seed),
        num_workers=workers,
        pin_memory=cuda,  # page-locked batches copy to the GPU asynchronously
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=4 if workers else None,
    )
    for images, labels, tokens in loader:
        # uint8 travels to the device (4x fewer bytes than float); normalising happens there
        yield (
            normalise(images.to(device, non_blocking=cuda)),
            labels.to(device, non_blocking=cuda),
            tokens.to(device, non_blocking=cuda) if data.has_captions else None,
        )


def eval_images(
    split: Split, image_size: tuple[int, int], device: torch.device, workers: int = 0
) -> Iterator[torch.Tensor]:
    """A split's images in order, normalised, without flips: the evaluation's input."""
    if split.images is not None:
        for start in range(0, len(split), EVAL_BATCH):
            yield normalise(split.images[start : start + EVAL_BATCH]).to(device)
        return
    cuda = device.type == "cuda"
    items = [(i, False, -1) for i in range(len(split))]
    loader = torch.utils.data.DataLoader(
        _ImageFiles(split, None, image_size),
        batch_sampler=[items[s : s + EVAL_BATCH] for s in range(0, len(items), EVAL_BATCH)],
        num_workers=workers,
        pin_memory=cuda,
        worker_init_fn=_one_thread if workers else None,
    )
    for images, _, _ in loader:
        yield normalise(images.to(device, non_blocking=cuda))


def _in_memory_batches(data: ReIDData, batch_size: int, seed: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    n = len(data.labels)
    non_blocking = device.type == "cuda"
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            images = normalise(data.train.images[idx])
            flip = torch.rand(batch_size, generator=gen) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            yield (
                images.to(device, non_blocking=non_blocking),
                data.labels[idx].to(device, non_blocking=non_blocking),
                data.train.tokens[idx].to(device, non_blocking=non_blocking),
            )
