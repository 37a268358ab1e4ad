"""Faults planted in our own training function, for the tests of what the search does with a verdict.

A testing hook, as ``--inject-fault`` is (hidden from ``--help``): ``reid-tune search --inject-fault
plant:KIND`` plants KIND in every trial of the search, the way the bug happens in user code, so a
test can watch a real search meet a real fault (benchmarks/planted.py holds the benchmark's many
kinds; these are the few the search tests need). Not for users: a planted search is broken on purpose.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import yaml

from reid_core.errors import UserError


def _shuffled_labels(trainer) -> None:  # labels reshuffled among a batch's images, every batch: no signal
    import torch

    inner, gen = trainer.stream, torch.Generator().manual_seed(1)
    trainer.stream = ((images, labels[torch.randperm(len(labels), generator=gen)], tokens) for images, labels, tokens in inner)


def _detached_head(trainer) -> None:  # logits from classifier.weight.detach(): no gradient reaches the head
    import torch.nn.functional as F

    m = trainer.model
    m.identity_logits = lambda f: F.linear(m.bnneck(f), m.classifier.weight.detach())


PLANTS: dict[str, Callable] = {"shuffled_labels": _shuffled_labels, "detached_head": _detached_head}
_planted: Optional[str] = None  # the kind this process plants in every Trainer `train` builds


def plant(kind: Optional[str]) -> None:
    """Plant ``kind`` (a key of `PLANTS`) in every run this process trains from now on; None: none."""
    global _planted
    if kind is not None and kind not in PLANTS:
        raise ValueError(f"unknown fault '{kind}'; known: {', '.join(PLANTS)}")
    _planted = kind


def apply(trainer) -> None:
    """Called by `reid_core.train.train` on the Trainer it built."""
    if _planted is not None:
        PLANTS[_planted](trainer)


def parse_fault(spec: Optional[str], job: Any) -> Optional[dict[str, Any]]:
    """``--inject-fault``: ``STEP:KEY=VALUE`` -> ``{"step", "key", "value"}`` (the first attempt of a trial whose KEY
    is VALUE raises at step STEP: `tuner.trainable`), the value typed as ``job``'s config wants it; ``plant:KIND`` ->
    ``{"plant": KIND}`` (every trial of ours trains with KIND planted)."""
    if spec is None:
        return None
    if spec.startswith("plant:"):
        if spec[6:] not in PLANTS:
            raise UserError(f"--inject-fault '{spec}': unknown plant; known: {', '.join(PLANTS)}")
        return {"plant": spec[6:]}
    step, _, assignment = spec.partition(":")
    key, _, value = assignment.partition("=")
    if not step.isdigit() or not key or not value:
        raise UserError(f"--inject-fault '{spec}' is not STEP:KEY=VALUE")
    return {"step": int(step), "key": key, "value": job.value(key, yaml.safe_load(value))}
