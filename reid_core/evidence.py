"""What a stuck run's per-step metrics say about its head, measured once for every cause to read.

`Evidence.from_rows` turns the rows a run reported (``reid_core.schema.STEP_METRICS``, oldest
first) into the few numbers the causes (`reid_core.causes`) test: how far the head moved, its
gradient, its logits, its update per unit of LR, its path. Measurements only: every threshold
lives with the cause that applies it. A metric a loop did not report is NaN or None here, and a
cause that needs it does not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from reid_core.levels import DEFAULT_CHANCE_MARGIN, go_line
from reid_core.schema import GUARD_FIRINGS

NAN = math.nan


@dataclass(frozen=True)
class Evidence:
    steps: int  # the last row's optimizer step
    rows: int  # rows with head metrics
    recent_rows: int  # the run's last tenth, at least 3 rows: what "recent" and "for long" mean
    chance: float  # chance_ce = log(C)
    go_line: float  # log(C) - the run's margin
    ce_ema: float  # at the last row
    ce_ema_peak: float  # the highest ce_ema of the run
    recent_ce: float  # the raw ce over the recent rows (ce_ema lags ~20 batches behind a run that just started)
    label_smoothing: Optional[float]  # the configured one, where known
    ce_floor: float  # the smallest CE that label smoothing lets any head reach (0 without smoothing)
    skipped: float  # optimizer steps skipped so far (fp16 inf/nan gradients)
    loss_scale: float  # the fp16 GradScaler's scale at the last row
    feature_spread: Optional[float]  # median over the run; None when not reported
    grad_peak: Optional[float]  # the largest finite classifier gradient norm; None when none is finite
    grad_first: float  # the classifier gradient norm at the first row
    grad_now: float  # ... and at the last
    moved: float  # head_weight_change at the last row: distance from the start over the initial norm
    guard_firings: float  # times the head guard lowered the head LR
    lr_peak: float  # the largest head_lr_applied (0 when not reported)
    lr_zero_always: bool  # every row reports an applied head LR of exactly 0: a group holds the head, at LR 0
    lr_zero_tail: int  # trailing rows whose applied head LR is 0
    lr_zero_since: Optional[int]  # the step from which it has been 0 (None when it is not 0 at the end)
    lrs: str  # the configured and applied LRs, as the evidence quotes them
    step_per_lr: Optional[float]  # median head_step_per_lr over the rows with an LR applied; None when not reported
    path: Optional[float]  # the head's path over its distance from the start; None when not reported
    logit_std: float  # at the last row
    logit_std_peak: float
    gain: float  # logit spread per unit weight norm now, over its peak
    grad_ratio: float  # the classifier gradient now over its first value
    unseen_ce: float = NAN  # the CE on held-out images never trained on (`unseen_ce`) at the last row; NaN when not reported
    unseen_best: float = NAN  # ... its lowest over the run: has it ever left chance?
    ce_ema_at_unseen: float = NAN  # ce_ema at the row the last unseen_ce measurement first appeared in (the gap at one time)

    @property
    def ce_text(self) -> str:
        return f"ce_ema {self.ce_ema:.3f} vs chance {self.chance:.3f}"

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[dict[str, Any]],
        head_lr: Optional[float] = None,
        backbone_lr: Optional[float] = None,
        label_smoothing: Optional[float] = None,
        margin: float = DEFAULT_CHANCE_MARGIN,
    ) -> "Evidence":
        """The evidence of ``rows`` that report head metrics (``head_grad_norm``): at least one."""
        first, last = rows[0], rows[-1]
        chance = last["chance_ce"]
        recent = max(3, len(rows) // 10)
        reported = [r["head_lr_applied"] for r in rows if "head_lr_applied" in r]
        applied = [lr if math.isfinite(lr) else 0.0 for lr in (r.get("head_lr_applied", 0.0) for r in rows)]  # NaN: not held
        since = len(applied)
        while since > 0 and applied[since - 1] == 0:
            since -= 1
        grads = [r["head_grad_norm"] for r in rows if math.isfinite(r["head_grad_norm"])]
        # logit spread per unit weight norm, now against its peak (a squashing op with a tiny slope at the init's
        # small logits, such as a second softmax, has its peak later than the first step)
        gains = [r.get("logit_std", NAN) / max(r.get("head_weight_norm", NAN), 1e-12) for r in rows]
        unseen_now, unseen_best, ce_ema_at_unseen = unseen_trace([r["ce_ema"] for r in rows], [r.get("unseen_ce") for r in rows])
        return cls(
            steps=last["step"],
            rows=len(rows),
            recent_rows=recent,
            chance=chance,
            go_line=go_line(chance, margin),
            ce_ema=last["ce_ema"],
            ce_ema_peak=max(r["ce_ema"] for r in rows),
            recent_ce=sum(r.get("ce", r["ce_ema"]) for r in rows[-recent:]) / len(rows[-recent:]),
            label_smoothing=label_smoothing,
            ce_floor=smoothed_ce_floor(label_smoothing, round(math.exp(chance))) if label_smoothing else 0.0,
            skipped=last.get("skipped_steps", 0),
            loss_scale=last.get("loss_scale", NAN),
            feature_spread=_median(rows, "feature_spread"),
            grad_peak=max(grads) if grads else None,
            grad_first=first["head_grad_norm"],
            grad_now=last["head_grad_norm"],
            moved=last.get("head_weight_change", NAN),
            guard_firings=last.get(GUARD_FIRINGS) or 0,
            lr_peak=max(applied),
            lr_zero_always=bool(reported) and len(reported) == len(rows) and all(lr == 0 for lr in reported),
            lr_zero_tail=len(applied) - since,
            lr_zero_since=rows[since]["step"] if since < len(rows) else None,
            lrs=lr_text(rows, head_lr, backbone_lr),
            step_per_lr=_median([r for r in rows if r.get("head_lr_applied", 0) > 0], "head_step_per_lr"),
            path=_path_ratio(rows),
            logit_std=last.get("logit_std", NAN),
            logit_std_peak=max(r.get("logit_std", NAN) for r in rows),
            gain=_ratio(gains[-1], max(gains)),
            grad_ratio=_ratio(last["head_grad_norm"], first["head_grad_norm"]),
            unseen_ce=unseen_now,
            unseen_best=unseen_best,
            ce_ema_at_unseen=ce_ema_at_unseen,
        )


def unseen_trace(ce_emas: Sequence[float], unseen: Sequence[Any]) -> tuple[float, float, float]:
    """``(unseen_ce now, its lowest, ce_ema where its current value first appeared)`` from a run's ``ce_ema`` and
    ``unseen_ce`` per row (None or NaN where not reported; NaNs when never). A loop repeats a measurement until the next
    one, so the gap between the two CEs is also read at the time the unseen one was taken, not only against a ce_ema
    that moved on since."""
    finite = [i for i, u in enumerate(unseen) if isinstance(u, (int, float)) and not isinstance(u, bool) and math.isfinite(u)]
    if not finite:
        return NAN, NAN, NAN
    i = finite[-1]
    now = unseen[i]
    while i > 0 and unseen[i - 1] == now:
        i -= 1
    return now, min(unseen[j] for j in finite), ce_emas[i]


def _median(rows: Sequence[dict[str, Any]], key: str) -> Optional[float]:
    """The median of a metric over the rows that report it finite; None when none does."""
    values = sorted(r[key] for r in rows if key in r and math.isfinite(r[key]))
    return values[len(values) // 2] if values else None


def _path_ratio(rows: Sequence[dict[str, Any]]) -> Optional[float]:
    """The head's path (the sum of its steps, ``head_update`` x norm) over its distance from its start; None when
    the rows do not report ``head_update``. A monitor measuring every k steps repeats a measurement between
    (``head_measured_step``): each measurement counts once, for the steps since the one before. The start's norm
    is taken from the first row (one step in, at the warm-up's smallest LR). Free or LR-bound heads: ~1-3; a
    head weight decay pulls back each step: tens."""
    measured = {r.get("head_measured_step", r["step"]): r for r in rows if math.isfinite(r.get("head_update", NAN))}
    if not measured:
        return None
    path, before = 0.0, 0
    for step in sorted(measured):
        path += measured[step]["head_update"] * measured[step].get("head_weight_norm", NAN) * (step - before)
        before = step
    distance = measured[before].get("head_weight_change", NAN) * rows[0].get("head_weight_norm", NAN)
    return path / distance if distance > 0 else None


def _ratio(now: float, then: float) -> float:
    return now / then if then > 0 else math.inf


def smoothed_ce_floor(label_smoothing: float, classes: int) -> float:
    """The smallest label-smoothed cross-entropy any logits reach: the entropy of the smoothed target."""
    if not 0 < label_smoothing < 1 or classes < 2:
        return 0.0
    rest = label_smoothing / classes
    top = 1.0 - label_smoothing + rest
    return -top * math.log(top) - (classes - 1) * rest * math.log(rest)


def lr_text(rows: Sequence[dict[str, Any]], head_lr: Optional[float], backbone_lr: Optional[float]) -> str:
    """The configured LRs (where known) and the ones the optimizer applied: peak and at the last step."""
    applied = [r["head_lr_applied"] for r in rows if math.isfinite(r.get("head_lr_applied", math.nan))]
    parts = [f"head_lr {head_lr:.2g}"] if head_lr is not None else []
    if applied:
        parts.append(f"head_lr_applied peak {max(applied):.2g}, last {applied[-1]:.2g}")
    if backbone_lr is not None:
        parts.append(f"backbone_lr {backbone_lr:.2g}")
    return ", ".join(parts) or "an unreported head LR"
