"""Data sets as tensors the training loop can batch, and the checks made before training.

Identity ids are remapped to contiguous ``0..C-1`` in *sorted* order of the raw
ids (never set or hash order: every Ray worker is a separate process and must
agree on which class is which).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from reid_core.config import TrainConfig
from reid_core.errors import UserError
from reid_core.synthetic import make_synthetic

SYNTHETIC_DATA_SEED = 0  # the synthetic data set is one fixed data set; `seed` varies training only


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    pids: torch.Tensor  # raw identity ids (N,)
    tokens: torch.Tensor  # caption tokens (N, context_length)


@dataclass
class ReIDData:
    name: str
    train: Split
    test: Split
    labels: torch.Tensor  # contiguous training labels 0..C-1 (N_train,)
    num_classes: int  # C, the head's width; chance CE is log(C)


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


@functools.lru_cache(maxsize=4)
def _synthetic_tensors(identities: int, per_identity: int, size: tuple[int, int]):
    # Cached per process: Ray reuses actors, so later trials skip the rendering.
    train, test = make_synthetic(identities, per_identity, size, seed=SYNTHETIC_DATA_SEED)
    return train, test


@functools.lru_cache(maxsize=8)
def _tokenize(model: str, context_length: int, captions: tuple[str, ...]) -> torch.Tensor:
    tokenizer = open_clip.get_tokenizer(model, context_length=context_length)
    return tokenizer(list(captions))


def _load_synthetic(cfg: TrainConfig, context_length: int) -> tuple[Split, Split]:
    train, test = _synthetic_tensors(cfg.synthetic_identities, cfg.synthetic_images_per_identity, tuple(cfg.image_size))
    splits = []
    for part in (train, test):
        tokens = _tokenize(cfg.model, context_length, tuple(part.captions))
        splits.append(Split(torch.from_numpy(part.images), torch.from_numpy(part.pids), tokens))
    return splits[0], splits[1]


# A registry is a plain dict: the error for an unknown name lists the known ones.
FORMATS: dict[str, Callable[[TrainConfig, int], tuple[Split, Split]]] = {
    "synthetic": _load_synthetic,
}


def detect_format(cfg: TrainConfig) -> str:
    if cfg.data_format is not None:
        if cfg.data_format not in FORMATS:
            raise UserError(f"unknown data format '{cfg.data_format}'; known: {', '.join(FORMATS)}")
        return cfg.data_format
    if cfg.data == "synthetic":
        return "synthetic"
    raise UserError(
        f"cannot read data set '{cfg.data}': no loader recognises it; known formats: {', '.join(FORMATS)} "
        "(use --data synthetic)"
    )


def load_data(cfg: TrainConfig, context_length: int) -> ReIDData:
    """Load ``cfg.data``, remap its training ids and check them against ``cfg.num_classes``."""
    fmt = detect_format(cfg)
    train, test = FORMATS[fmt](cfg, context_length)
    if len(train.pids) < cfg.batch_size:
        raise UserError(
            f"the training split has {len(train.pids)} images, fewer than batch_size={cfg.batch_size}; "
            "lower batch_size or add data"
        )
    labels, unique = remap_ids(train.pids)
    num_classes = cfg.num_classes if cfg.num_classes is not None else len(unique)
    check_labels(labels, num_classes)
    return ReIDData(name=fmt, train=train, test=test, labels=labels, num_classes=num_classes)


_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255
_STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to CLIP-normalised float."""
    return (images.float() - _MEAN) / _STD


def batches(
    data: ReIDData, batch_size: int, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless ``(images, labels, tokens)`` micro-batches: reshuffled each epoch, last partial batch dropped,
    random horizontal flip. Driven by one seeded generator, so the stream is the same in every process."""
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
