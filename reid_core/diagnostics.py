"""Why is the identity CE stuck at chance? Read it off the metrics a run reported.

The seed team found their causes by printing the head's weight norm and grad
norm every 100 steps and reading them. `diagnose` does that reading on the
per-step metrics (``reid_core.schema.STEP_METRICS``), in this order, the
first match winning:

=======================  =================================================================
cause                    what the metrics show
=======================  =================================================================
amp_skipped_steps        the fp16 GradScaler skipped most steps (inf/nan gradients): the
                         loss scale collapses and the weights do not move
no_gradient              the classifier's gradient is zero at every step (detached
                         features, ``no_grad`` code, a frozen head)
head_not_in_optimizer    gradient reaches the classifier but its weights never change
bounded_logits           the weights grow freely but the logits do not follow them: the
                         logit spread per unit of weight norm collapses (a cosine or
                         normalised classifier with no scale)
labels_no_signal         the weights move far (>= 5x their initial norm) yet CE has not
                         left chance at all (shuffled or misaligned labels)
lr_too_low               gradient flows, weights move, but too little to matter
=======================  =================================================================

Thresholds were set on planted faults of the tiny model (tests/reid_core/test_diagnostics.py):
a healthy head LR moves the head ~50x its initial norm in 150 steps; 1e-5 moves it 0.1x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from reid_core.chance import DEFAULT_CHANCE_MARGIN, go_line

# cause -> (what it means, the usual fix)
CAUSES: dict[str, tuple[str, str]] = {
    "amp_skipped_steps": (
        "the fp16 GradScaler skipped most optimizer steps (inf/nan gradients), so the loss scale collapsed",
        "train in bf16 or fp32 (--set amp=bf16 or amp=off), or find the op that overflows",
    ),
    "no_gradient": (
        "no gradient reaches the identity classifier",
        "look for detached features, torch.no_grad() or a frozen (requires_grad=False) head",
    ),
    "head_not_in_optimizer": (
        "the classifier gets a gradient but its weights never change",
        "add the classifier and BNNeck parameters to an optimizer parameter group",
    ),
    "bounded_logits": (
        "the identity logits stay bounded while the weights grow",
        "feed the raw (un-normalised) features through the BNNeck, or scale a cosine classifier",
    ),
    "labels_no_signal": (
        "the head's weights move freely but CE does not leave chance",
        "check that labels belong to their images (misaligned or shuffled labels)",
    ),
    "lr_too_low": (
        "the head learns, but its learning rate is too low to leave chance in time",
        "raise head_lr (on the synthetic default the learnable region starts near 2.5e-4)",
    ),
}

FREE_MOVEMENT = 5.0  # head moved >= 5x its initial norm: nothing is holding the weights back
GAIN_COLLAPSE = 0.5  # logit spread per unit weight norm fell to half or less: logits ignore the weights
FLAT_CE = 0.05  # within 0.05 nats of chance: CE has not left it


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    evidence: str  # the numbers the verdict rests on

    @property
    def meaning(self) -> str:
        return CAUSES[self.cause][0]

    @property
    def fix(self) -> str:
        return CAUSES[self.cause][1]

    def line(self) -> str:
        return f"{self.cause}: {self.meaning} ({self.evidence}); fix: {self.fix}"


def diagnose(rows: Sequence[dict[str, Any]]) -> Optional[Diagnosis]:
    """The likely cause of a run stuck at chance, from its per-step metrics (oldest first)."""
    rows = [r for r in rows if "head_grad_norm" in r]
    if not rows:
        return None
    first, last = rows[0], rows[-1]
    steps = last["step"]

    # fp16: most steps skipped, the loss scale collapsing.
    if last.get("skipped_steps", 0) >= 0.5 * steps:
        return Diagnosis(
            "amp_skipped_steps", f"{last['skipped_steps']} of {steps} steps skipped, loss scale {last['loss_scale']:g}"
        )
    # No gradient at all reaches the classifier.
    grads = [r["head_grad_norm"] for r in rows if math.isfinite(r["head_grad_norm"])]
    if not grads or max(grads) == 0.0:
        return Diagnosis("no_gradient", f"classifier gradient norm 0 at all {steps} steps")
    # Gradient arrives but the weights stay put: the optimizer does not hold them.
    moved = last["head_weight_change"]
    if moved <= 1e-9:
        return Diagnosis(
            "head_not_in_optimizer",
            f"classifier gradient norm {last['head_grad_norm']:.3g} yet its weights unchanged after {steps} steps",
        )
    # The weights grow, the logits do not follow.
    gain_first = first["logit_std"] / max(first["head_weight_norm"], 1e-12)
    gain_last = last["logit_std"] / max(last["head_weight_norm"], 1e-12)
    if moved >= 1.0 and gain_last <= GAIN_COLLAPSE * gain_first and last["logit_std"] < 1.0:
        return Diagnosis(
            "bounded_logits",
            f"head moved {moved:.1f}x its initial norm but logit std is {last['logit_std']:.3g}; logit spread per unit "
            f"weight norm fell {gain_first / max(gain_last, 1e-12):.1f}x",
        )
    # Free weights, flat CE: the labels carry nothing to learn.
    if moved >= FREE_MOVEMENT and last["ce_ema"] >= last["chance_ce"] - FLAT_CE:
        return Diagnosis(
            "labels_no_signal",
            f"head moved {moved:.1f}x its initial norm, ce_ema {last['ce_ema']:.3f} vs chance {last['chance_ce']:.3f}",
        )
    return Diagnosis(
        "lr_too_low",
        f"head moved {moved:.2g}x its initial norm in {steps} steps at applied head LR {last['head_lr_applied']:.2g}; "
        f"ce_ema {last['ce_ema']:.3f} vs chance {last['chance_ce']:.3f}",
    )


def stuck_cause(rows: Sequence[dict[str, Any]], margin: float = DEFAULT_CHANCE_MARGIN) -> Optional[Diagnosis]:
    """The diagnosis of a run that ended above the Go line; None for one that got below it."""
    if not rows or rows[-1]["ce_ema"] <= go_line(rows[-1]["chance_ce"], margin):
        return None
    return diagnose(rows)
