"""The early verdict: a trial that cannot reach the Go line by its budget, stopped before the grace window.

The seed's window (300 steps) is a backstop, not the earliest the evidence allows. At each new head measurement
`EarlyJudge` asks the diagnosis (`reid_core.causes.walk` on `reid_core.evidence.Evidence`, as the search names a
stuck trial's cause) what holds the head back, then whether that can still change by the budget:

* **wiring** (`WIRING`: no gradient, a head the optimizer does not hold, collapsed features, bounded logits,
  labels with no signal, labels memorised (also below the Go line: `reid_core.causes.memorising`), AMP skipping
  the steps, a label smoothing whose CE floor is above the Go line): no LR
  and no time repairs them, so the verdict comes as soon as the cause fits on `WIRING_MIN_MEASURED` head
  measurements (step 10 at the monitor's default). Outside the calibrated family (`Scope.calibrated`) only the
  exact tests (`EXACT`: a gradient of exactly 0, weights exactly unchanged, skipped steps, the config's floor)
  are trusted this early;
* **held back** (`LR_BOUND`: the LR too low, a gradient too small for AdamW, weight decay; and `unknown`, on its
  logits only): the head's movement and its logits' spread are projected to the budget at their pace over the
  later half of the rows, per LR-image, at the LR applied now (`projected`); the run stops when either falls
  under `NEEDED_SHARE` of the least a learning run of the calibration set had when it crossed the Go line
  (`MOVED_AT_GO`, `SPREAD_AT_GO`) and the CE's own trend does not reach the line by the budget either. This
  needs the budget, an LR no longer rising (a warm-up over) and not meant to change (`Scope.lr_fixed`), and a
  calibrated run.

Where the evidence is ambiguous the judge says nothing and the window decides, as before. The thresholds and
what each was measured on are below; BENCHMARKS.md section 12 has the calibration and the reported set. Pure
Python: the search's stopper, the plain job, the tables' replay, the simulator and ``reid-tune diagnose`` all
call it through `reid_core.chance.ChanceLevelRule`.
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
    LABEL_SMOOTHING_TOO_HIGH,
    LABELS_MEMORISED,
    LABELS_NO_SIGNAL,
    LR_TOO_LOW,
    NO_GRADIENT,
    UNKNOWN,
    WEIGHT_DECAY_TOO_HIGH,
    walk,
)
from reid_core.levels import go_line
from reid_core.evidence import Evidence

# no LR and no time repairs these: the verdict as soon as the diagnosis fits (label smoothing: the config's own CE floor)
WIRING = frozenset(
    c.name
    for c in (
        LABEL_SMOOTHING_TOO_HIGH, AMP_SKIPPED_STEPS, FEATURES_COLLAPSED, NO_GRADIENT, HEAD_NOT_IN_OPTIMIZER, BOUNDED_LOGITS,
        LABELS_NO_SIGNAL, LABELS_MEMORISED,
    )
)  # fmt: skip
# ... of which these need no threshold measured on a family: trusted early on any run
EXACT = frozenset(c.name for c in (LABEL_SMOOTHING_TOO_HIGH, AMP_SKIPPED_STEPS, NO_GRADIENT, HEAD_NOT_IN_OPTIMIZER))
LR_BOUND = frozenset(c.name for c in (LR_TOO_LOW, GRADIENT_TOO_SMALL, WEIGHT_DECAY_TOO_HIGH))

# Calibrated on benchmarks/diagnosis.py's calibration seeds 0-2 (260 fault runs, 96 healthy runs that cross the Go
# line: their rows replayed, `--rejudge`); reported on seeds 3-5 (BENCHMARKS.md section 12).
WIRING_MIN_MEASURED = 3  # head measurements (monitor_every apart) before any early verdict: steps 1, 5, 10
MOVED_AT_GO = 3.7  # the least head_weight_change a healthy calibration run had when it crossed the Go line (3.71-3.88: the edge runs)
SPREAD_AT_GO = 0.179  # ... and the least logit_std (0.179-0.183)
# stop when a projection is below this share of those: the most pessimistic projection any healthy run had before
# its window was 4.34 (movement) and 0.209 (spread), 1.95x above the lines this draws (2.22 and 0.107)
NEEDED_SHARE = 0.6
PACE = 1.0  # a margin on the pace the projections assume (1: the later half's own)
LR_BOUND_MIN_STEPS = 10  # the projections need this many steps of an LR that is no longer rising (20: the same verdicts, 10 steps later)
# bounded logits before the window: also the classifier's gradient at a tenth of its first value or less (planted
# cosine heads 0.01-0.12 from step 5-10; a random-init head that then learns fits the bounded test at 0.41-0.53)
BOUNDED_GRAD_EARLY = 0.1
# lr_too_low before the window: also a head whose path is nearly straight (path / distance from the start at most
# this; planted low LRs 1.26-1.46): a head weight decay pulls back reads as lr_too_low until its path passes
# HELD_BACK (4), e.g. 3.6 at step 30, 5.4 at step 50
STRAIGHT_PATH = 2.0
# labels_no_signal before the window: also a CE never more than this above chance (labels shuffled, rolled or
# images without identity: at most +0.62 in their first 80 steps; a head at LR 30 runs away to +3.2 by step 15,
# moving as freely: an LR too high, which the head guard, when on, answers first)
RUNAWAY = 1.0
# the logits' spread is projected only for a head that has moved at least its own initial norm: before that the
# init's logits dominate and their spread grows faster later (a head LR 2.1e-5 with a 76,800-image budget: moved
# 0.13x at step 20, spread projected to 0.009, crossed the Go line at 29,792 images); heads stopped on their spread
# here had moved 4.5x or more (a logit scale of 1e-4 or 3e-5, a second softmax)
OWN_LOGITS = 1.0
CALIBRATED_MODELS = ("reid-tiny",)  # the family the thresholds were measured on
CALIBRATED_MAX_CLASSES = 3000  # ... at 400 to 3,000 identities


@dataclass(frozen=True)
class EarlyVerdict:
    cause: str  # the diagnosis' cause at the verdict
    step: int
    samples: float
    basis: str  # "wiring" or "projection"
    confidence: float  # how far short the projection is (needed / projected), 1 for wiring
    evidence: str  # the cause's evidence
    short: str = ""  # the projection that fell short ("" for wiring)

    def when(self, grace_samples: float) -> str:
        """How early and why then, without the cause's evidence (printed beside it by the diagnosis)."""
        windows = self.samples / grace_samples if grace_samples else math.nan
        why = self.short or "a wiring fault: no LR and no time repairs it"
        return f"early verdict at step {self.step} ({windows:.2f} of the grace window): {why}"

    def line(self, grace_samples: float) -> str:
        return f"{self.when(grace_samples)}; {self.cause}: {self.evidence}"


@dataclass(frozen=True)
class Scope:
    """What the early verdict may read of a run, from its config (`scope`)."""

    calibrated: bool = True  # our function on a model the thresholds were measured on
    pretrained: bool = True  # the backbone starts from weights (random init: labels_no_signal waits for the window)
    lr_fixed: bool = True  # the head LR is not meant to change (no head_lr_raise, head_lr_schedule or head_guard)
    label_smoothing: Optional[float] = None  # the configured one (the reported ce is the smoothed loss)


def scope(config: Optional[Mapping[str, Any]], trainable: bool = False) -> Scope:
    """The `Scope` of a run of ``config`` (a TrainConfig's dict or a user's mapping; ``trainable``: a user's own
    function, never calibrated)."""
    get = (config or {}).get
    raise_on = isinstance(get("head_lr_raise"), (int, float)) and get("head_lr_raise") > 1
    smoothing = get("label_smoothing")
    return Scope(
        calibrated=not trainable and get("model", "reid-tiny") in CALIBRATED_MODELS,
        pretrained=get("pretrained", "auto") not in (None, "none", "None"),
        lr_fixed=not raise_on and not get("head_lr_schedule") and not get("head_guard"),
        label_smoothing=float(smoothing) if isinstance(smoothing, (int, float)) and not isinstance(smoothing, bool) else None,
    )


def projected(rows: Sequence[Mapping[str, Any]], budget_samples: float, key: str = "head_weight_change") -> Optional[float]:
    """``key`` (the head's movement, or its logits' spread) at the budget if it goes on as over the later half of the
    rows: its gain per LR-image there (applied head LR x images), times the LR-images still to come at the LR applied
    now, added to where it is. A head pulled back as far as it steps (weight decay) stays where it is; a free head at
    a steady LR goes on in a line; one that speeds up is projected at its newer pace; at LR 0 nothing changes. None
    without the LRs or the metric."""
    half, last = rows[len(rows) // 2], rows[-1]
    spent, before = 0.0, half["samples"]
    for r in rows[len(rows) // 2 + 1 :]:
        spent += r.get("head_lr_applied", math.nan) * (r["samples"] - before)
        before = r["samples"]
    now, lr_now = last.get(key, math.nan), last.get("head_lr_applied", math.nan)
    gained = now - half.get(key, math.nan)
    if not (math.isfinite(now) and math.isfinite(gained) and math.isfinite(lr_now) and math.isfinite(spent)):
        return None
    if lr_now == 0:
        return now
    if not spent > 0:
        return None
    return now + max(gained, 0.0) / spent * lr_now * max(budget_samples - last["samples"], 0.0) * PACE


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

    def __init__(self, margin: float, budget_samples: Optional[float] = None, scope: Scope = Scope()):
        self.margin, self.budget_samples, self.scope = margin, budget_samples, scope

    def judge(self, rows: Sequence[Mapping[str, Any]]) -> Optional[EarlyVerdict]:
        """``rows``: the run's rows since its grace window began that report head metrics, oldest first."""
        if not rows:
            return None
        last = rows[-1]
        line = go_line(last["chance_ce"], self.margin)
        below = not last["ce_ema"] > line  # learning, unless memorising: only labels_memorised may stop it (below)
        unseen = last.get("unseen_ce", math.nan)
        if (below and not math.isfinite(unseen)) or (not below and unseen <= line):
            return None  # above the line but not on held-out images: what it learns carries over (chance.py)
        measured = {r.get("head_measured_step", r["step"]) for r in rows}
        if len(measured) < WIRING_MIN_MEASURED:
            return None
        calibrated = self.scope.calibrated and last["chance_ce"] <= math.log(CALIBRATED_MAX_CLASSES) + 1e-9
        evidence = Evidence.from_rows(rows, margin=self.margin, label_smoothing=self.scope.label_smoothing)
        cause, text = walk(evidence)
        if below and cause.name != LABELS_MEMORISED.name:
            return None
        if cause.name == LABELS_NO_SIGNAL.name and not (
            self.scope.pretrained and self.scope.lr_fixed and evidence.ce_ema_peak <= evidence.chance + RUNAWAY
        ):
            return None  # a random-init head overshoots chance as a noise-fitting one does, then learns; one far above it runs away
        if cause.name == BOUNDED_LOGITS.name and not evidence.grad_ratio <= BOUNDED_GRAD_EARLY:
            return None  # ... and on its way down its logits' spread per unit weight falls as a bounded head's does
        if cause.name in WIRING and (calibrated or cause.name in EXACT):
            return EarlyVerdict(cause.name, last["step"], last["samples"], "wiring", 1.0, text)
        if cause.name not in LR_BOUND | {UNKNOWN} or not (calibrated and self.scope.lr_fixed and self.budget_samples):
            return None
        if not _lr_settled(rows) or _trend_reaches(rows, self.budget_samples, line):
            return None  # an LR still rising (warm-up) may yet move it; a falling CE may yet reach the line
        lr_now = last.get("head_lr_applied", math.nan)
        if cause.name == LR_TOO_LOW.name and lr_now != 0 and not (evidence.path is not None and evidence.path <= STRAIGHT_PATH):
            return None  # not yet told apart from a head held back (weight_decay_too_high)
        for key, at_go, what in (("head_weight_change", MOVED_AT_GO, "moved"), ("logit_std", SPREAD_AT_GO, "spread its logits")):
            if key == "head_weight_change" and cause.name == UNKNOWN:
                continue  # a head that moved freely and fits no cause: only its logits' spread is read
            if key == "logit_std" and not evidence.moved >= OWN_LOGITS:
                continue  # its logits are still its init's: their spread grows faster once the head has moved
            reach, needed = projected(rows, self.budget_samples, key), NEEDED_SHARE * at_go
            if reach is not None and reach < needed:
                confidence = needed / max(reach, 1e-12)
                return EarlyVerdict(
                    cause.name, last["step"], last["samples"], "projection", confidence, text,
                    f"at its pace the head would have {what} {reach:.2g} by the budget ({self.budget_samples:,.0f} images), "
                    f"under {needed:.2g} ({NEEDED_SHARE:g} of the least any learning run of the calibration set had when it "
                    f"crossed the Go line, {at_go:g}): {confidence:.1f}x short",
                )  # fmt: skip
        return None
