"""Why is the identity CE stuck at chance? Read it off the metrics a run reported.

The seed team found their causes by printing the head's weight norm and grad
norm every 100 steps and reading them. `diagnose` does that reading on the
per-step metrics (``reid_core.schema.STEP_METRICS``), in this order, the
first match winning:

========================  ================================================================
cause                     what the metrics show
========================  ================================================================
label_smoothing_too_high  the configured label smoothing puts the smoothed CE's floor above
                          the Go line (0.95 for 400 classes: 5.88 > 5.60): no head crosses it
amp_skipped_steps         the fp16 GradScaler skipped most steps (inf/nan gradients): the
                          loss scale collapses and the weights do not move
features_collapsed        the features entering the head barely differ between the images of
                          a batch (``feature_spread`` < 0.02): a collapsed backbone, blank images
no_gradient               the classifier's gradient is zero at every step (detached
                          features, ``no_grad`` code, a frozen head)
head_not_in_optimizer     gradient reaches the classifier but its weights never change
guard_lowered_lr          the head moved < 5x and the head guard lowered the LR (the CE had
                          run away at the LR before): raising it is not the fix
lr_too_low (zeroed)       the LR applied to the head has been 0 for the last tenth of the run
                          (a schedule zeroed it), however far the head moved before
gradient_too_small        the head moved < 5x and the optimizer moves each head weight by a
                          tiny fraction of the LR it applies (``head_step_per_lr`` < 0.01;
                          AdamW: 0.03-1): the gradient is too small for AdamW's eps (a loss
                          divided by a large constant, gradients clipped to a tiny norm)
weight_decay_too_high     the head moved < 5x yet its path (the sum of its steps) is >= 4x its
                          distance from the start: weight decay or an L2 penalty pulls it back
bounded_logits            the weights grow freely but the logits do not follow them: the logit
                          spread per unit of weight norm falls to half its peak (a cosine or
                          normalised classifier with no scale), or the head's gradient dies
                          while the logit std stays under 1 nat (squashed: tanh, clamp); and
                          the logits never spread 4x wider, and CE is not confidently wrong
labels_no_signal          the weights move far (>= 5x their initial norm) yet CE, smoothed and
                          raw, has not left chance, and rose 0.15 nats above it (a head fitting
                          noise is confidently wrong: shuffled or misaligned labels, or images
                          that no longer show who they are)
lr_too_low                gradient flows, the logits follow the weights, but the head moved
                          less than 5x its initial norm: its LR holds it back
unknown                   none of these fits: the evidence against each, and the seed's
                          checklist (`Diagnosis.block`)
========================  ================================================================

The thresholds and the healthy head's reference values (`HEALTHY_HEAD`) say where they were measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from reid_core.chance import DEFAULT_CHANCE_MARGIN, go_line
from reid_core.schema import GUARD_FIRINGS

# cause -> (what it means, the usual fix)
CAUSES: dict[str, tuple[str, str]] = {
    "label_smoothing_too_high": (
        "with this label smoothing the smallest cross-entropy the head can reach is above the Go line",
        "lower label_smoothing (0.1 is the usual ReID value; the CE floor rises to log(C) as it nears 1)",
    ),
    "amp_skipped_steps": (
        "the fp16 GradScaler skipped most optimizer steps (inf/nan gradients), so the loss scale collapsed",
        "train in bf16 or fp32 (--set amp=bf16 or amp=off), or find the op that overflows",
    ),
    "features_collapsed": (
        "the features entering the head are the same for every image of a batch",
        "check the images reach the backbone (not blank or constant) and the backbone's output is not collapsed "
        "(a dead projection, features averaged over the batch)",
    ),
    "no_gradient": (
        "no gradient reaches the identity classifier",
        "look for detached features, torch.no_grad() or a frozen (requires_grad=False) head",
    ),
    "head_not_in_optimizer": (
        "the classifier gets a gradient but its weights never change",
        "add the classifier and BNNeck parameters to an optimizer parameter group",
    ),
    "gradient_too_small": (
        "the optimizer moves the head by a tiny fraction of its LR: the gradient it gets is too small for AdamW's eps",
        "do not divide the loss by a large constant; raise grad_clip or set it to 0 (off)",
    ),
    "weight_decay_too_high": (
        "the head takes full steps but is pulled back as far: weight decay or an L2 penalty holds it near zero",
        "lower the head's weight_decay (the default is 4e-5; AdamW decays each weight by head_lr x weight_decay per step) "
        "or the L2 penalty on the classifier",
    ),
    "bounded_logits": (
        "the identity logits stay bounded while the weights grow",
        "feed the raw (un-normalised) features through the BNNeck, scale a cosine classifier, do not squash logits (tanh, clamp)",
    ),
    "labels_no_signal": (
        "the head's weights move freely but CE does not leave chance",
        "check that labels belong to their images (misaligned or shuffled labels) and that augmentation "
        "leaves a person recognisable",
    ),
    "guard_lowered_lr": (
        "the head guard lowered the head LR after the CE ran away, and at the lowered LR the head moves too little",
        "pick a head_lr between the guard's last two (see its events), lengthen lr_warmup_steps, or set head_guard_factor nearer 1",
    ),
    "lr_too_low": (
        "the head learns, but its learning rate is too low to leave chance in time",
        "raise head_lr (on the synthetic default the learnable region starts near 2.5e-4)",
    ),
}

UNKNOWN = "unknown"  # no known cause fits: said with the evidence against each, never a guess dressed as a cause
# The seed's checklist, for a run no known cause fits: where their real bugs were.
CHECKLIST = (
    "the classifier sits after the BNNeck on the raw encode_image(normalize=False) features",
    "no torch.no_grad() or .detach() between the features and the logits",
    "the classifier and BNNeck are in an optimizer parameter group",
    "labels are 0..C-1 and belong to their images",
)

# Thresholds, calibrated on 150-step runs of the embedded default (pretrained reid-tiny, 400 ids, CE only,
# seed 0): head LRs 1e-6..1e-2, and the faults tanh(logits), an unscaled cosine classifier and shuffled
# labels (pretrained and random init); the tests judge other plants and seeds.
FREE_MOVEMENT = 5.0  # head moved >= 5x its initial norm: not held back by its LR (1e-4, stuck: 1.6x; 2.5e-4, the edge: 2.3-4x)
GAIN_COLLAPSE = 0.5  # logit spread per unit weight norm fell to half its peak or less (cosine: 0.1x; healthy: ~1x)
GRAD_COLLAPSE = 0.5  # head gradient fell to half its first value or less (tanh: 0.2-0.3x; healthy: 1.0-1.2x)
BOUNDED_STD = 1.0  # logit std below 1 nat: the logits cannot separate 400 classes (healthy at 5x moved: >= 0.17, and rising)
FLAT_CE = 0.05  # within 0.05 nats of chance: CE has not left it
# Calibrated on benchmarks/diagnosis.py's seeds 0-2 (its reported set is seeds 3-5):
COLLAPSED_SPREAD = 0.02  # feature_spread below this: the images look alike to the head (collapsed 0.003, blank 1e-7; every other run >= 0.18)
TINY_STEP = 0.01  # head_step_per_lr below this: the gradient is swamped by AdamW's eps (clip 1e-8: 0.0014, loss/1e9: 2e-5-3e-4; other kinds that reach the test >= 0.034)
LOGIT_DECAY = 0.25  # logit std fell below this share of its peak: the head could spread its logits (shuffled labels: 0.04-0.11; cosine: 0.5)
# the head's path over its distance from the start at or above this: pulled back each step (weight decay 500: 6.2-25,
# L2 penalty 5: 70-300; every other stuck kind that moved < 5x: 1.0-2.5)
HELD_BACK = 4.0
# ce_ema now this far above chance: confidently wrong, so not bounded (shuffled labels at a 75-step verdict: +0.16 to
# +0.22; bounded heads: at most +0.06)
WRONG_NOW = 0.1
# ce_ema rose this far above chance: the head is confidently wrong. Seed 0 of benchmarks/diagnosis.py's plants, at
# the verdict: shuffled or rolled labels +0.33 to +0.41; squashed logits (tanh, clamp; at most 1 nat apart) +0.01 to +0.06.
OVERSHOOT = 0.15

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
    ruled_out: tuple[str, ...] = ()  # UNKNOWN: why each known cause does not fit
    reference: str = ""  # the run's head values beside a healthy head's at the same step

    @property
    def meaning(self) -> str:
        return CAUSES[self.cause][0] if self.cause in CAUSES else "no known cause fits the metrics"

    @property
    def fix(self) -> str:
        return CAUSES[self.cause][1] if self.cause in CAUSES else "check that " + "; ".join(CHECKLIST)

    def line(self) -> str:
        return f"{self.cause}: {self.meaning} ({self.evidence}); fix: {self.fix}"

    def block(self) -> str:
        """The line, then the head beside a healthy one and, for UNKNOWN, the evidence against each cause."""
        lines = [self.line()] + ([f"  {self.reference}"] if self.reference else [])
        lines += [f"  not {r}" for r in self.ruled_out]
        return "\n".join(lines)


def diagnose(
    rows: Sequence[dict[str, Any]],
    head_lr: Optional[float] = None,
    backbone_lr: Optional[float] = None,
    label_smoothing: Optional[float] = None,
    margin: float = DEFAULT_CHANCE_MARGIN,
) -> Optional[Diagnosis]:
    """The likely cause of a run stuck at chance, from its per-step metrics (oldest first).

    ``head_lr``, ``backbone_lr``: the configured LRs, quoted beside the applied ones where known;
    ``label_smoothing``: the configured one (the reported ``ce`` is the smoothed loss), and the Go line's ``margin``."""
    rows = [r for r in rows if "head_grad_norm" in r]
    if not rows:
        return None
    first, last = rows[0], rows[-1]
    steps, chance, ce_ema = last["step"], last["chance_ce"], last["ce_ema"]
    ref = reference_line(last)

    def found(cause: str, evidence: str, ruled_out: tuple[str, ...] = ()) -> Diagnosis:
        return Diagnosis(cause, evidence, ruled_out, ref)

    # The config itself forbids crossing the Go line: the smoothed CE cannot fall below its floor.
    floor = smoothed_ce_floor(label_smoothing, round(math.exp(chance))) if label_smoothing else 0.0
    if floor > go_line(chance, margin):
        return found(
            "label_smoothing_too_high",
            f"label_smoothing {label_smoothing:g} puts the CE floor at {floor:.2f}, above the Go line {go_line(chance, margin):.2f}",
        )
    # fp16: most steps skipped, the loss scale collapsing.
    skipped = last.get("skipped_steps", 0)
    if skipped >= 0.5 * steps:
        return found("amp_skipped_steps", f"{skipped} of {steps} steps skipped, loss scale {last['loss_scale']:g}")
    # Every image of a batch gives the head the same features: nothing to tell identities apart by (and a
    # BNNeck turns identical features into zeros, so the head's gradient vanishes too: said before no_gradient).
    spread = _median(rows, "feature_spread")
    if spread is not None and spread < COLLAPSED_SPREAD:
        return found("features_collapsed", f"feature spread across the batch {spread:.2g} (other runs >= 0.18)")
    # No gradient at all reaches the classifier.
    grads = [r["head_grad_norm"] for r in rows if math.isfinite(r["head_grad_norm"])]
    if not grads or max(grads) == 0.0:
        return found("no_gradient", f"classifier gradient norm 0 at all {steps} steps")
    # Gradient arrives but the weights stay put: the optimizer does not hold them.
    moved = last["head_weight_change"]
    if moved <= 1e-9:
        return found(
            "head_not_in_optimizer",
            f"classifier gradient norm {last['head_grad_norm']:.3g} yet its weights unchanged after {steps} steps",
        )
    lrs = lr_text(rows, head_lr, backbone_lr)
    # The head guard restored the head and lowered its LR after the CE ran away (its jumps back are no weight decay).
    firings = last.get(GUARD_FIRINGS) or 0
    if moved < FREE_MOVEMENT and firings:  # the guard chose this LR because the one before ran away
        return found(
            "guard_lowered_lr",
            f"head guard fired {firings:g} time(s), each restoring the head and lowering its LR; the head moved {moved:.2g}x "
            f"its initial norm by step {steps} at {lrs}; ce_ema {ce_ema:.3f} vs chance {chance:.3f}",
        )
    # The LR the optimizer applies to the head fell to 0 and stayed there: a scheduler zeroed it (not a slow LR).
    applied = [r.get("head_lr_applied", 0.0) for r in rows]
    since = len(applied)
    while since > 0 and applied[since - 1] == 0:
        since -= 1
    if max(applied) > 0 and len(applied) - since >= max(3, len(rows) // 10):
        return found(
            "lr_too_low",
            f"the head's applied LR has been 0 since step {rows[since]['step']} (a schedule zeroed it) at {lrs}; "
            f"the head moved {moved:.2g}x its initial norm",
        )
    # The head barely moved. Either its steps are a sliver of the LR the optimizer applies (AdamW's eps swamps a
    # gradient made tiny), or they are full-sized and undone each step (weight decay), or the LR itself is small
    # (lr_too_low, below): the update size per LR and the path per distance tell the three apart.
    step_per_lr = _median([r for r in rows if r.get("head_lr_applied", 0) > 0], "head_step_per_lr")
    path = _path_ratio(rows)
    if moved < FREE_MOVEMENT and step_per_lr is not None and step_per_lr < TINY_STEP:
        return found(
            "gradient_too_small",
            f"each head weight moved {step_per_lr:.2g} of the applied LR per step (AdamW: 0.03-1) at {lrs}; "
            f"classifier gradient norm {last['head_grad_norm']:.3g} before clipping",
        )
    if moved < FREE_MOVEMENT and path is not None and path >= HELD_BACK:
        return found(
            "weight_decay_too_high",
            f"the head's path is {path:.0f}x its distance from the start (it moved {moved:.2g}x its initial norm) at {lrs}",
        )
    # logit spread per unit weight norm, now against its peak (a squashing op with a tiny slope at the init's small
    # logits, such as a second softmax, has its peak later than the first step)
    gains = [r["logit_std"] / max(r["head_weight_norm"], 1e-12) for r in rows]
    gain = _ratio(gains[-1], max(gains))
    std_peak = max(r["logit_std"] for r in rows)
    grad = _ratio(last["head_grad_norm"], first["head_grad_norm"])
    left_chance = ce_ema < chance - FLAT_CE
    recent = rows[-max(3, len(rows) // 10) :]  # raw ce: ce_ema lags ~20 batches behind a run that just started
    raw_flat = sum(r.get("ce", r["ce_ema"]) for r in recent) / len(recent) >= chance - FLAT_CE
    ce_text = f"ce_ema {ce_ema:.3f} vs chance {chance:.3f}"
    # The weights grow, the logits do not follow: the spread per unit weight norm collapses (a cosine
    # classifier), or the gradient dies while CE sits above the Go line (squashed logits: tanh, clamp).
    not_wrong = ce_ema <= chance + FLAT_CE  # squashed logits cannot be confidently wrong either
    # A head that once spread its logits wider and let them shrink (to < LOGIT_DECAY of the peak) was not bounded:
    # it fits noise (shuffled labels, images without identity) or smoothed targets, and its spread died away.
    bounded = (
        last["logit_std"] < BOUNDED_STD
        and ce_ema <= chance + WRONG_NOW  # bounded logits cannot be confidently wrong either
        and last["logit_std"] >= LOGIT_DECAY * std_peak
        and ((moved >= 1.0 and gain <= GAIN_COLLAPSE) or (moved >= FREE_MOVEMENT and grad <= GRAD_COLLAPSE and not_wrong))
    )
    if bounded:
        return found(
            "bounded_logits",
            f"head moved {moved:.1f}x its initial norm but logit std is {last['logit_std']:.3g}; logit spread per unit "
            f"weight norm x{gain:.2g} of its peak, classifier gradient x{grad:.2g} of its first value",
        )
    # Free weights, CE not below chance and once well above it: a head fitting each batch's noise is confidently
    # wrong on the next (shuffled labels: ce_ema 6.3-6.4 for chance 5.99); a healthy start never rises above.
    overshot = max(r["ce_ema"] for r in rows) >= chance + OVERSHOOT
    if moved >= FREE_MOVEMENT and not left_chance and raw_flat and overshot:
        return found("labels_no_signal", f"head moved {moved:.1f}x its initial norm, {ce_text}")
    # Gradient flows, the logits follow the weights, but the weights moved little: the LR holds them back.
    if moved < FREE_MOVEMENT:
        return found("lr_too_low", f"head moved {moved:.2g}x its initial norm in {steps} steps at {lrs}; {ce_text}")
    step_text = "not reported" if step_per_lr is None else f"{step_per_lr:.2g} of the LR per step"
    path_text = "not reported" if path is None else f"{path:.1f}x its distance"
    return found(
        UNKNOWN,
        f"head moved {moved:.1f}x its initial norm at {lrs}, logit std {last['logit_std']:.3g}, {ce_text}",
        (
            f"label_smoothing_too_high: CE floor {floor:.2f} (Go line {go_line(chance, margin):.2f}); "
            f"not amp_skipped_steps: {skipped} of {steps} steps skipped",
            f"features_collapsed: feature spread across the batch {'not reported' if spread is None else f'{spread:.2g}'}",
            f"no_gradient: classifier gradient norm {last['head_grad_norm']:.3g}",
            f"head_not_in_optimizer: the head moved {moved:.1f}x",
            f"gradient_too_small: its steps {step_text}; not weight_decay_too_high: its path {path_text}; "
            f"not lr_too_low: the head moved {moved:.1f}x (>= {FREE_MOVEMENT:g}x: not held back)",
            f"bounded_logits: logit std {last['logit_std']:.3g} (peak {std_peak:.3g}), spread per unit weight norm "
            f"x{gain:.2g} of its peak, gradient x{grad:.2g} of its first (bounded: std < {BOUNDED_STD:g}, >= "
            f"{LOGIT_DECAY:g} of its peak, and either <= {GAIN_COLLAPSE})",
            f"labels_no_signal: CE left chance ({ce_text}, recent raw ce below {chance - FLAT_CE:.2f})"
            if not raw_flat or left_chance
            else f"labels_no_signal: ce_ema never rose above chance + {OVERSHOOT} (a head fitting noise would)",
            f"guard_lowered_lr: the head moved {moved:.1f}x (>= {FREE_MOVEMENT:g}x)"
            if firings
            else "guard_lowered_lr: the head guard never fired",
        ),
    )


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
    measured = {r.get("head_measured_step", r["step"]): r for r in rows if math.isfinite(r.get("head_update", math.nan))}
    if not measured:
        return None
    path, before = 0.0, 0
    for step in sorted(measured):
        path += measured[step]["head_update"] * measured[step]["head_weight_norm"] * (step - before)
        before = step
    distance = measured[before]["head_weight_change"] * rows[0]["head_weight_norm"]
    return path / distance if distance > 0 else None


def smoothed_ce_floor(label_smoothing: float, classes: int) -> float:
    """The smallest label-smoothed cross-entropy any logits reach: the entropy of the smoothed target."""
    if not 0 < label_smoothing < 1 or classes < 2:
        return 0.0
    rest = label_smoothing / classes
    top = 1.0 - label_smoothing + rest
    return -top * math.log(top) - (classes - 1) * rest * math.log(rest)


def _ratio(now: float, then: float) -> float:
    return now / then if then > 0 else math.inf


def lr_text(rows: Sequence[dict[str, Any]], head_lr: Optional[float], backbone_lr: Optional[float]) -> str:
    """The configured LRs (where known) and the ones the optimizer applied: peak and at the last step."""
    applied = [r["head_lr_applied"] for r in rows if "head_lr_applied" in r]
    parts = [f"head_lr {head_lr:.2g}"] if head_lr is not None else []
    if applied:
        parts.append(f"head_lr_applied peak {max(applied):.2g}, last {applied[-1]:.2g}")
    if backbone_lr is not None:
        parts.append(f"backbone_lr {backbone_lr:.2g}")
    return ", ".join(parts) or "an unreported head LR"


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


def stuck_cause(
    rows: Sequence[dict[str, Any]], margin: float = DEFAULT_CHANCE_MARGIN, config: Any = None
) -> Optional[Diagnosis]:
    """The diagnosis of a run that ended above the Go line; None for one that got below it.
    ``config``: the run's config (TrainConfig or mapping), for the configured LRs."""
    if not rows or rows[-1]["ce_ema"] <= go_line(rows[-1]["chance_ce"], margin):
        return None
    return diagnose(rows, **configured_lrs(config, DIAGNOSED_KEYS), margin=margin)
