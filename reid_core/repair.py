"""The config change that fixes a stuck run, sized from its own evidence.

Four causes have a fix a config value makes (`FIXABLE`); the others live in code or data
(`reid_core.actions`). The plain job prints the fix as a re-run command; a search can use the
same `Fix` for a repaired trial.

- ``lr_too_low``: under AdamW a held-back head moves in proportion to the LR it is given: its
  movement per unit of applied LR (``head_weight_change`` over the sum of ``head_lr_applied``)
  is near constant below the learnable region (benchmarks/diagnosis.py's calibration rows: 220-330
  per LR-step on the default at 1e-5 and 3e-6, batch 16-32, accumulation 1-4). The fix is the head
  LR that, at that rate and with the run's own schedule, moves the head `TARGET_MOVED` times its
  initial norm by the end of the grace window: what the calibration set's healthy mid-LR runs moved
  there (1e-3: 15-32x by the window; the edge of the learnable region, 3.6-4.2x). Not a fixed
  factor: a head that moved 0.05x gets a larger one than a head that moved 0.5x. It never goes
  below the lowest head LR that learned in the same search, when one did.
- ``weight_decay_too_high``: back to the default's weight decay (what every healthy calibration run
  trained with), or the path-to-distance ratio's share of the current one when that is lower.
- ``gradient_too_small``: clipping off when a clip is set (a tiny clip is the config's way to starve
  AdamW); a loss divided by a constant is code: no config fix.
- ``label_smoothing_too_high``: 0.1, the usual ReID value (its CE floor is far under the Go line).

Pure: no torch, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

TARGET_MOVED = 40.0  # head_weight_change by the end of the grace window the LR fix aims at
DEFAULT_WEIGHT_DECAY = 4e-5  # reid_core.config.TrainConfig's
USUAL_SMOOTHING = 0.1
FIXABLE = ("lr_too_low", "weight_decay_too_high", "gradient_too_small", "label_smoothing_too_high")


@dataclass(frozen=True)
class Fix:
    """A config change for one stuck run: ``changes`` (key -> new value), how it was sized, and a note (a value
    beyond the searched space, say)."""

    cause: str
    changes: dict[str, Any]
    why: str
    note: str = ""
    within: dict[str, bool] = field(default_factory=dict)  # key -> inside the space it was searched in (searched keys only)

    def set_args(self) -> str:
        """``key=value ...`` for ``--set``."""
        return fix_args(self.changes)

    def describe(self) -> str:
        return f"{self.set_args()} ({self.why}{'; ' + self.note if self.note else ''})"


def fix_args(changes: Mapping[str, Any]) -> str:
    """``key=value ...`` for ``--set``: what a re-run passes to apply ``changes``."""
    return " ".join(f"{k}={_fmt(v)}" for k, v in changes.items())


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _value(config: Mapping[str, Any], key: str) -> Optional[float]:
    v = config.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def fix_for(
    cause: str,
    rows: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    window_steps: float,
    bounds: Optional[Mapping[str, tuple[float, float]]] = None,
    learned_lrs: Sequence[float] = (),
) -> Optional[Fix]:
    """The `Fix` for a run stuck with ``cause``, or None when no config value fixes it (or the rows cannot size it).

    ``rows``: its results (oldest first, with `reid_core.monitor.HeadMonitor`'s keys); ``config``: its config;
    ``window_steps``: the grace window in its optimizer steps; ``bounds``: the searched keys' (low, high);
    ``learned_lrs``: head LRs that crossed the Go line in the same search."""
    bounds = bounds or {}
    if cause == "lr_too_low":
        return _head_lr(rows, config, window_steps, bounds, learned_lrs)
    if cause == "weight_decay_too_high":
        wd = _value(config, "weight_decay")
        if wd is None or wd <= 0:
            return None
        path = _last(rows, "head_update"), _last(rows, "head_weight_change")
        new = DEFAULT_WEIGHT_DECAY if wd > DEFAULT_WEIGHT_DECAY else wd / 10
        return _bounded(Fix(cause, {"weight_decay": new}, f"weight decay {wd:g} pulled the head back (path {path[0] or math.nan:.3g})"), bounds)
    if cause == "gradient_too_small":
        clip = _value(config, "grad_clip")
        if not clip:
            return None  # a loss scaled down in code: nothing in the config fixes it
        return _bounded(Fix(cause, {"grad_clip": 0.0}, f"grad_clip {clip:g} cut the gradient below AdamW's eps"), bounds)
    if cause == "label_smoothing_too_high":
        ls = _value(config, "label_smoothing")
        return _bounded(Fix(cause, {"label_smoothing": USUAL_SMOOTHING}, f"label_smoothing {ls:g} puts the CE floor above the Go line"), bounds)
    return None


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> Optional[float]:
    for row in reversed(rows):
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return None


def _head_lr(rows, config, window_steps, bounds, learned_lrs) -> Optional[Fix]:
    head_lr = _value(config, "head_lr")
    measured = [r for r in rows if isinstance(r.get("head_weight_change"), (int, float)) and isinstance(r.get("head_lr_applied"), (int, float))]
    if head_lr is None or head_lr <= 0 or not measured:
        return None
    last = measured[-1]
    moved, steps = float(last["head_weight_change"]), float(last["step"])
    integral = sum(float(r["head_lr_applied"]) for r in rows if isinstance(r.get("head_lr_applied"), (int, float)) and r["step"] <= steps)
    if not (moved > 0 and integral > 0 and steps > 0):
        return None
    rate = moved / integral  # head movement per unit of applied LR (one row per optimizer step)
    shape = integral / (head_lr * steps)  # the schedule's mean share of head_lr so far (a warm-up makes it < 1)
    new = TARGET_MOVED / (rate * shape * max(window_steps, 1.0))
    why = (
        f"the head moved {moved:.2g}x its initial norm in {steps:.0f} steps at head_lr {head_lr:g} ({rate:.0f} per unit of LR); "
        f"{new:.3g} moves it {TARGET_MOVED:g}x by the end of the {window_steps:.0f}-step window"
    )
    if learned_lrs and new < min(learned_lrs):
        new = min(learned_lrs)
        why += f", raised to {new:.3g}, the lowest head LR that learned in this search"
    new = max(new, head_lr * 2)  # never a change too small to matter
    return _bounded(Fix("lr_too_low", {"head_lr": float(f"{new:.3g}")}, why), bounds)


def _bounded(fix: Fix, bounds: Mapping[str, tuple[float, float]]) -> Fix:
    """Which changes fall inside their searched range; a note for those above it (the whole space too low)."""
    within, notes = {}, []
    for key, value in fix.changes.items():
        if key not in bounds:
            continue
        low, high = bounds[key]
        within[key] = low <= value <= high
        if value > high:
            notes.append(f"{key} {_fmt(value)} is above the space's top {high:g}: the whole searched range is too low for this run")
        elif value < low:
            notes.append(f"{key} {_fmt(value)} is below the space's bottom {low:g}")
    return Fix(fix.cause, fix.changes, fix.why, "; ".join(notes), within)
