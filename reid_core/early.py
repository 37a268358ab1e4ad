"""The early verdict: a trial that cannot reach the Go line by its budget, stopped before the grace window.

The seed's window (300 steps) is a backstop, not the earliest the evidence allows. From the first steps
`EarlyJudge` reads the rows a run reports and asks the diagnosis (`reid_core.causes.WALK`, on
`reid_core.evidence.Evidence`) what holds the head back, then whether that can still change by the budget:

* **wiring** (`WIRING`: no gradient, a head the optimizer does not hold, collapsed features, bounded logits,
  labels with no signal, AMP skipping the steps): no value of the LR or time repairs them, so the verdict
  comes as soon as the diagnosis fits on at least `WIRING_MIN_MEASURED` head measurements (step 10 at the
  monitor's default every 5). Outside the calibrated family only the exact tests (a gradient of exactly 0,
  weights exactly unchanged, skipped steps) are trusted this early;
* **LR-bound** (`LR_BOUND`: the LR too low, a gradient too small for AdamW, weight decay holding the head):
  the head's movement so far is projected to the budget at the LR it trains at now, in proportion to the
  LR-images still to come (`projected_movement`, to the power `GROWTH`), and the run stops when even that
  reach is below `NEEDED_SHARE` x the least movement any learning run of the calibration set had made when it
  crossed the Go line (`MOVED_AT_GO`), and the CE's own trend does not reach the line by the budget either.
  This needs the budget, an LR that has stopped rising (warm-up over) and is not meant to change
  (``lr_fixed``: no ``head_lr_raise``, no ``head_lr_schedule``), and a run inside the family the thresholds
  were measured on (``calibrated``): otherwise the run waits for the window.

Where the evidence is ambiguous the judge says nothing and the window decides, as before. Pure Python: the
search's stopper, the plain job, the tables' replay, the simulator and ``reid-tune diagnose`` all call it
through `reid_core.chance.ChanceLevelRule`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from reid_core.causes import (
    AMP_SKIPPED_STEPS,
    BOUNDED_LOGITS,
    FEATURES_COLLAPSED,
    GRADIENT_TOO_SMALL,
    HEAD_NOT_IN_OPTIMIZER,
    LABELS_NO_SIGNAL,
    LR_TOO_LOW,
    NO_GRADIENT,
    WEIGHT_DECAY_TOO_HIGH,
    walk,
)
from reid_core.levels import go_line
from reid_core.evidence import Evidence

WIRING = frozenset(c.name for c in (AMP_SKIPPED_STEPS, FEATURES_COLLAPSED, NO_GRADIENT, HEAD_NOT_IN_OPTIMIZER, BOUNDED_LOGITS, LABELS_NO_SIGNAL))
EXACT = frozenset(c.name for c in (AMP_SKIPPED_STEPS, NO_GRADIENT, HEAD_NOT_IN_OPTIMIZER))  # no threshold measured on a family
LR_BOUND = frozenset(c.name for c in (LR_TOO_LOW, GRADIENT_TOO_SMALL, WEIGHT_DECAY_TOO_HIGH))

# Calibrated on benchmarks/diagnosis.py's calibration seeds 0-2 (faults and healthy runs); reported on 3-5.
WIRING_MIN_MEASURED = 3  # head measurements (monitor_every apart) before a wiring verdict: steps 1, 5, 10
MOVED_AT_GO = 1.0  # the least head_weight_change any healthy calibration run had when it crossed the Go line
NEEDED_SHARE = 0.5  # stop when the projected movement is below this share of MOVED_AT_GO
GROWTH = 1.0  # movement grows as (LR-images)^GROWTH: 1 = a steady pace; above 1 allows a head that speeds up
LR_BOUND_MIN_STEPS = 20  # the LR projection needs this many steps of the settled LR's pace
CALIBRATED_MODELS = ("reid-tiny",)  # the family the thresholds were measured on
CALIBRATED_MAX_CLASSES = 3000  # ... at 400 to 3,000 identities


@dataclass(frozen=True)
class EarlyVerdict:
    cause: str  # the diagnosis' cause at the verdict
    step: int
    samples: float
    basis: str  # "wiring" or "projection"
    confidence: float  # how far past the line the evidence is (>= 1): needed / projected movement, or 1 for wiring
    evidence: str

    def line(self, grace_samples: float) -> str:
        windows = self.samples / grace_samples if grace_samples else math.nan
        return (
            f"early verdict at step {self.step} ({windows:.2f} of the grace window), {self.basis}: {self.cause}; "
            f"{self.evidence}"
        )


def scope(config: Optional[Mapping[str, Any]], trainable: bool = False) -> dict[str, bool]:
    """The judge's ``calibrated`` and ``lr_fixed`` for a run of ``config`` (a TrainConfig's dict or a user's
    mapping; ``trainable``: a user's own function): calibrated only for our function on the calibrated models;
    the LR fixed unless the config asks the run to change it (a progressive raise, a head-LR schedule)."""
    get = (config or {}).get
    raise_on = isinstance(get("head_lr_raise"), (int, float)) and get("head_lr_raise") > 1
    return {
        "calibrated": not trainable and get("model", "reid-tiny") in CALIBRATED_MODELS,
        "lr_fixed": not raise_on and not get("head_lr_schedule"),
    }


def projected_movement(rows: Sequence[Mapping[str, Any]], budget_samples: float) -> Optional[float]:
    """The head's movement (head_weight_change) at the budget if it goes on at the LR applied now, in proportion
    to the LR-images (applied head LR x images) spent and still to come; None without the LRs or movement."""
    spent, before = 0.0, 0.0
    for r in rows:
        spent += r.get("head_lr_applied", math.nan) * (r["samples"] - before)
        before = r["samples"]
    last = rows[-1]
    moved, lr_now = last.get("head_weight_change", math.nan), last.get("head_lr_applied", math.nan)
    if not (spent > 0 and math.isfinite(moved) and math.isfinite(lr_now)):
        return None
    to_come = lr_now * max(budget_samples - last["samples"], 0.0)
    return moved * ((spent + to_come) / spent) ** GROWTH


def _trend_reaches(rows: Sequence[Mapping[str, Any]], budget_samples: float, line: float) -> bool:
    """Does ce_ema, falling at its pace over the last half of the rows, reach the Go line by the budget?"""
    last, then = rows[-1], rows[len(rows) // 2]
    fallen = then["ce_ema"] - last["ce_ema"]
    if fallen <= 0 or last["samples"] <= then["samples"]:
        return False
    per_sample = fallen / (last["samples"] - then["samples"])
    return last["ce_ema"] - per_sample * (budget_samples - last["samples"]) <= line


def _lr_settled(rows: Sequence[Mapping[str, Any]]) -> bool:
    """The applied head LR has not risen over the last LR_BOUND_MIN_STEPS steps (a warm-up is over), and the run
    is at least that long."""
    last = rows[-1]["step"]
    if rows[0]["step"] > last - LR_BOUND_MIN_STEPS:
        return False
    lrs = [r.get("head_lr_applied", math.nan) for r in rows if r["step"] >= last - LR_BOUND_MIN_STEPS]
    return all(math.isfinite(x) for x in lrs) and lrs[-1] <= lrs[0] * (1 + 1e-6)


class EarlyJudge:
    """Reads one run's rows (head metrics included) before the window; `judge` returns an `EarlyVerdict` or None."""

    def __init__(self, margin: float, budget_samples: Optional[float] = None, calibrated: bool = True, lr_fixed: bool = True):
        self.margin, self.budget_samples, self.calibrated, self.lr_fixed = margin, budget_samples, calibrated, lr_fixed

    def judge(self, rows: Sequence[Mapping[str, Any]]) -> Optional[EarlyVerdict]:
        """``rows``: the run's rows since its grace window began that report head metrics, oldest first."""
        if not rows:
            return None
        last = rows[-1]
        line = go_line(last["chance_ce"], self.margin)
        if not last["ce_ema"] > line:
            return None
        measured = {r.get("head_measured_step", r["step"]) for r in rows}
        if len(measured) < WIRING_MIN_MEASURED:
            return None
        calibrated = self.calibrated and last["chance_ce"] <= math.log(CALIBRATED_MAX_CLASSES) + 1e-9
        cause, text = walk(Evidence.from_rows(rows, margin=self.margin))
        if cause.name in WIRING and (calibrated or cause.name in EXACT):
            return EarlyVerdict(cause.name, last["step"], last["samples"], "wiring", 1.0, text)
        if cause.name not in LR_BOUND or not (calibrated and self.lr_fixed and self.budget_samples) or not _lr_settled(rows):
            return None
        reach = projected_movement(rows, self.budget_samples)
        needed = NEEDED_SHARE * MOVED_AT_GO
        if reach is None or reach >= needed or _trend_reaches(rows, self.budget_samples, line):
            return None
        confidence = needed / max(reach, 1e-12)
        return EarlyVerdict(
            cause.name, last["step"], last["samples"], "projection", confidence,
            f"{text}; at this pace the head would have moved {reach:.2g}x its initial norm by the budget "
            f"({self.budget_samples:,.0f} images), under {needed:.2g}x ({NEEDED_SHARE:g} of the least any learning "
            f"run of the calibration set had moved when it crossed the Go line, {MOVED_AT_GO:g}x): "
            f"{confidence:.1f}x short",
        )  # fmt: skip
