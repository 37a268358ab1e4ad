"""Schedules as small pure functions of the optimizer step (0-based)."""

from __future__ import annotations

import math
from typing import Sequence


def lr_factor(step: int, lr_warmup_steps: int, total_steps: int) -> float:
    """Multiplier of every group's base LR: linear warm-up, then cosine decay to 0 (as open_clip)."""
    if step < lr_warmup_steps:
        return (step + 1) / lr_warmup_steps
    decay_steps = total_steps - lr_warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - lr_warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def sdm_weight_at(step: int, ce_only_steps: int, ramp_steps: int, target: float) -> float:
    """SDM weight: 0 during the CE-only phase, then a linear ramp to ``target``."""
    if step < ce_only_steps:
        return 0.0
    if ramp_steps <= 0:
        return target
    return target * min(1.0, (step - ce_only_steps + 1) / ramp_steps)


def ema(previous: float | None, value: float, beta: float) -> float:
    """Exponential moving average started at the first value (no zero-bias to correct)."""
    return value if previous is None else beta * previous + (1.0 - beta) * value


def scheduled_value(schedule: Sequence[Sequence[float]] | None, step: int, default: float) -> float:
    """The value a ``[[step, value], ...]`` schedule (steps ascending) holds after ``step`` optimizer steps:
    the last entry whose step is ``<= step``, or ``default`` before the first (or without a schedule)."""
    value = default
    for start, entry in schedule or ():
        if start > step:
            break
        value = float(entry)
    return value
