"""The held-out slice and the unseen-image CE: the one measurement that tells learning from memorising.

A head fed a fixed wrong identity per image (an annotation-join bug: the ids permuted among the images once)
drives the training CE down by memorising each image, and learns nothing that carries to another image of the
same person: on the images it trains on the two look alike. So each training identity with at least
``holdout_min_images`` images gives ``holdout_per_id`` of them to a held-out slice that is never trained on
(`held_out`, `take`: the same images for every seed and every trial, drawn with `HOLDOUT_SEED`), and every
``unseen_every`` steps `UnseenCE` measures the identity CE on a fixed batch of them (`UNSEEN_BATCH` images),
reported as ``unseen_ce`` beside ``ce``. A learning head brings both down; a memorising one brings ``ce`` down
while ``unseen_ce`` stays at chance or rises above it (the cause ``labels_memorised``, `reid_core.causes`).

The measurement runs the model in eval mode under ``torch.no_grad()``: the BNNeck normalises with its running
statistics, as at inference, and the held-out images never touch those statistics (train mode would fold them
into the running mean and make the number depend on what else is in the batch); the training step's own
forward, backward and RNG are untouched, so a run's curve is the same with or without it. Any loop can use it::

    unseen = UnseenCE(images, labels, every=50)        # a fixed batch of images the loop never trains on
    ...
    if unseen.due(step):                               # after the optimizer step
        unseen.measure(model, lambda x: identity_logits(model, x))   # your forward to the identity logits
    report({..., "unseen_ce": unseen.last})            # the last measurement, repeated between

No Ray; numpy and torch only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

HOLDOUT_SEED = 0  # the held-out slice is part of the data set, not of a trial: the same images whatever `seed`
UNSEEN_BATCH = 32  # held-out images in the fixed batch unseen_ce is measured on (its cost: benchmarks/unseen_cost.py)


def held_out(pids: np.ndarray | torch.Tensor, per_id: int, min_images: int, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """Indices (ascending) of the images held out: ``per_id`` of each identity that has at least ``min_images``,
    picked by one seeded shuffle (the same set in every process)."""
    pids = np.asarray(pids)
    if per_id <= 0 or len(pids) == 0:
        return np.empty(0, np.int64)
    _, group, counts = np.unique(pids, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(pids))
    by_id = order[np.argsort(group[order], kind="stable")]  # grouped by identity, shuffled within each
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(pids)) - starts[group[by_id]]  # position of each image within its identity's group
    chosen = by_id[(rank < per_id) & (counts[group[by_id]] >= min_images)]
    return np.sort(chosen)


def take(split: Any, index: np.ndarray | torch.Tensor) -> Any:
    """The images ``index`` (ascending) of a `reid_core.data.Split`, with their captions, cameras and files."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.long)
    tokens, caption_image = split.tokens, split.caption_image
    if tokens is not None:
        kept = torch.isin(caption_image, index)
        tokens, caption_image = tokens[kept], torch.searchsorted(index, caption_image[kept])
    return dataclasses.replace(
        split,
        pids=split.pids[index],
        images=split.images[index] if split.images is not None else None,
        paths=[split.paths[i] for i in index.tolist()] if split.paths is not None else None,
        tokens=tokens,
        caption_image=caption_image,
        camids=split.camids[index] if split.camids is not None else None,
    )


def split_off(train: Any, per_id: int, min_images: int) -> tuple[Any, Optional[Any]]:
    """``(the training split without the held-out images, the held-out slice or None)``."""
    chosen = held_out(train.pids, per_id, min_images)
    if len(chosen) == 0:
        return train, None
    keep = np.setdiff1d(np.arange(len(train)), chosen)
    return take(train, keep), take(train, chosen)


def fixed_batch(count: int, size: int = UNSEEN_BATCH, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """Which held-out images (ascending positions in the slice) form the fixed batch: ``size`` of ``count``, seeded,
    so a slice of one image per identity gives one image each of ``size`` identities."""
    if count <= size:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:size])


class UnseenCE:
    """The identity CE on one fixed batch of held-out images, measured every ``every`` steps (NaN before the first).

    Not at step 1: there every head is at chance on every image, and a value at chance repeated until step ``every``
    would read, beside a training CE that has already fallen, as a memorising head."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, every: int):
        """``images``: the loop's model input (normalised, on the model's device); ``labels``: their class indices."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"UnseenCE(every={every!r}): must be an integer >= 1 (1 measures every step)")
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"UnseenCE: {len(images)} images and {len(labels)} labels; needs as many of each, at least one")
        self.images, self.labels, self.every = images, labels.to(images.device), every
        self.last = math.nan  # the latest measurement (NaN before the first)

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based, the step just taken) measures: every ``every``-th."""
        return step % self.every == 0

    @torch.no_grad()
    def measure(self, module: nn.Module, logits: Callable[[torch.Tensor], torch.Tensor], autocast=None) -> float:
        """The mean CE of ``logits(images)`` against the labels, with ``module`` in eval mode (restored after)."""
        was_training = module.training
        module.eval()
        try:
            with autocast if autocast is not None else contextlib.nullcontext():
                out = logits(self.images)
            self.last = nn.functional.cross_entropy(out.float(), self.labels).item()
        finally:
            module.train(was_training)
        return self.last
