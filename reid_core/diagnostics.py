"""Why is the identity CE stuck at chance? Read it off the metrics a run reported.

`diagnose` measures the run's evidence once (`reid_core.evidence.Evidence`), then walks the causes in
their one declared order (`reid_core.causes.WALK`, the first match winning; the table in
docs/causes.md is generated from it). A run no cause fits is `UNKNOWN`, with the evidence against
each cause and the seed's checklist (`Diagnosis.block`); so is a stuck run that reported no head
metrics: no evidence, no guess. Every diagnosis sets the head beside a healthy one (`HEALTHY_HEAD`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from reid_core.causes import (  # noqa: F401  (the thresholds and declarations, importable from here as before)
    BOUNDED_STD,
    CAUSES,
    CHECKLIST,
    COLLAPSED_SPREAD,
    DECLARED,
    FLAT_CE,
    FREE_MOVEMENT,
    GAIN_COLLAPSE,
    GRAD_COLLAPSE,
    HELD_BACK,
    LOGIT_DECAY,
    OVERSHOOT,
    TINY_STEP,
    UNKNOWN,
    WALK,
    WRONG_NOW,
    Cause,
    against_each,
    walk,
)
from reid_core.chance import DEFAULT_CHANCE_MARGIN, go_line
from reid_core.causes import memorising
from reid_core.evidence import unseen_trace
from reid_core.evidence import Evidence, lr_text, smoothed_ce_floor  # noqa: F401

HEAD_METRICS = ("head_grad_norm", "head_weight_change", "logit_std")  # a row without them carries no evidence

# Reference values of a healthy head (the seed's 权重范数基准): 12 healthy runs of the embedded default
# (pretrained reid-tiny, 400 ids, 300 steps, CE-only 50) at head LR 1e-3, 3e-3, 7.8e-3 and 1e-2, seeds 0-2,
# min-max at each step; all cross the Go line by step 100. Re-measure with `python benchmarks/healthy_head.py`.
# step -> metric -> (low, high)
HEALTHY_HEAD: dict[int, dict[str, tuple[float, float]]] = {
    25: {"head_weight_change": (4.48, 37.8), "head_grad_norm": (2.02, 2.31), "logit_std": (0.19, 1.66)},
    50: {"head_weight_change": (9.17, 60.4), "head_grad_norm": (2.07, 2.43), "logit_std": (0.42, 2.44)},
    100: {"head_weight_change": (16.6, 83.9), "head_grad_norm": (1.83, 2.56), "logit_std": (0.803, 2.98)},
    150: {"head_weight_change": (21.2, 96.9), "head_grad_norm": (1.92, 2.70), "logit_std": (1.07, 3.66)},
    300: {"head_weight_change": (24.8, 105.0), "head_grad_norm": (1.91, 2.67), "logit_std": (1.26, 4.38)},
}
REFERENCE_METRICS = ("head_weight_change", "head_grad_norm", "logit_std")


@dataclass(frozen=True)
class Diagnosis:
    cause: str  # a key of CAUSES, or UNKNOWN
    evidence: str  # the numbers the verdict rests on
    ruled_out: tuple[str, ...] = ()  # UNKNOWN: "cause: why not", one per cause of the walk
    reference: str = ""  # the run's head values beside a healthy head's at the same step

    @property
    def meaning(self) -> str:
        return DECLARED.get(self.cause, DECLARED[UNKNOWN]).meaning

    @property
    def fix(self) -> str:
        return DECLARED.get(self.cause, DECLARED[UNKNOWN]).fix

    def line(self) -> str:
        return f"{self.cause}: {self.meaning} ({self.evidence}); fix: {self.fix}"

    def block(self) -> str:
        """The line, then the head beside a healthy one and, for UNKNOWN, the evidence against each cause
        (two causes a line, so the block stays one screen)."""
        lines = [self.line()] + ([f"  {self.reference}"] if self.reference else [])
        nots = [f"not {r}" for r in self.ruled_out]
        lines += ["  " + "; ".join(nots[i : i + 2]) for i in range(0, len(nots), 2)]
        return "\n".join(lines)


def diagnose(
    rows: Sequence[dict[str, Any]],
    head_lr: Optional[float] = None,
    backbone_lr: Optional[float] = None,
    label_smoothing: Optional[float] = None,
    margin: float = DEFAULT_CHANCE_MARGIN,
) -> Diagnosis:
    """The likely cause of a run stuck at chance, from its per-step metrics (oldest first).

    ``head_lr``, ``backbone_lr``: the configured LRs, quoted beside the applied ones where known;
    ``label_smoothing``: the configured one (the reported ``ce`` is the smoothed loss), and the Go line's ``margin``.
    Rows without head metrics (a loop that does not report `reid_core.monitor.HeadMonitor`'s) give `UNKNOWN`."""
    reported = [r for r in rows if "head_grad_norm" in r]
    if not reported:
        return Diagnosis(
            UNKNOWN,
            f"no head metrics were reported ({', '.join(HEAD_METRICS)}): report reid_core.monitor.HeadMonitor's "
            "metrics to have the cause named",
        )
    evidence = Evidence.from_rows(reported, head_lr, backbone_lr, label_smoothing, margin)
    cause, text = walk(evidence)
    ruled_out = against_each(evidence) if cause.name == UNKNOWN else ()
    return Diagnosis(cause.name, text, ruled_out, reference_line(reported[-1]))


DIAGNOSED_KEYS = ("head_lr", "backbone_lr", "label_smoothing")  # the config values `diagnose` reads


def configured_lrs(config: Any, keys: Sequence[str] = ("head_lr", "backbone_lr")) -> dict[str, Optional[float]]:
    """``head_lr`` and ``backbone_lr`` (or ``keys``) of a config (a TrainConfig or a user's mapping) where it has them."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    out = {}
    for key in keys:
        value = get(key)
        out[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return out


def reference_line(row: dict[str, Any]) -> str:
    """The run's head metrics beside a healthy head's range at the nearest measured step at or below its own."""
    if not HEALTHY_HEAD:
        return ""
    steps = [s for s in HEALTHY_HEAD if s <= row["step"]] or [min(HEALTHY_HEAD)]
    at = max(steps)
    ranges = HEALTHY_HEAD[at]
    shown = [
        f"{m} {row[m]:.3g} (healthy {ranges[m][0]:.3g}-{ranges[m][1]:.3g})" for m in REFERENCE_METRICS if m in row and m in ranges
    ]
    return f"this head at step {row['step']} vs a healthy head of the default at step {at}: " + ", ".join(shown)


def stuck_cause(rows: Sequence[dict[str, Any]], margin: float = DEFAULT_CHANCE_MARGIN, config: Any = None) -> Optional[Diagnosis]:
    """The diagnosis of a run that ended above the Go line (`UNKNOWN` when it reported no head metrics); None
    only for a run that got below it without memorising (`reid_core.causes.memorising`: its training CE fell, its
    unseen-image CE did not), or reported nothing. ``config``: the run's config (TrainConfig or mapping), for the
    configured LRs and label smoothing."""
    if not rows:
        return None
    line = go_line(rows[-1]["chance_ce"], margin)
    if rows[-1]["ce_ema"] <= line and not memorising(
        rows[-1]["ce_ema"], *unseen_trace([r["ce_ema"] for r in rows], [r.get("unseen_ce") for r in rows]), line
    ):
        return None
    return diagnose(rows, **configured_lrs(config, DIAGNOSED_KEYS), margin=margin)
