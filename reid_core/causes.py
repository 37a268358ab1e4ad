"""Why is the identity CE stuck at chance? Each cause declared once, in the order `diagnose` tries them.

The seed team found their causes by printing the head's weight norm and grad norm every 100 steps
and reading them. A `Cause` is one such reading: what it means, its test on the run's evidence
(`reid_core.evidence.Evidence`; the evidence text when it fits, else None), what the evidence says
against it when no cause fits, the fix to print, and its line of documentation, which quotes the
thresholds below from the constants themselves. `WALK` is the order, the first match winning;
docs/causes.md's table is generated from it (``python docs/generate.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

from reid_core.levels import DEFAULT_CHANCE_MARGIN, go_line
from reid_core.evidence import Evidence, smoothed_ce_floor

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
# ce_ema (below the Go line) at least this far below unseen_ce (the CE on held-out images of the same identities, never
# trained on) while unseen_ce has never been below the Go line: the head memorises its training images. 204 healthy runs of
# benchmarks/diagnosis.py (seeds 0-5): the widest gap while unseen_ce had not left chance 0.30 (ids3000; all others
# <= 0.21); the ids permuted once (seeds 0-2, 22 runs): 0.48-1.30 by the budget (BENCHMARKS.md section 13)
MEMORISED_GAP = 0.5
STILL = 1e-9  # head_weight_change at or below this: the weights never changed
MOST = 0.5  # share of the steps skipped that collapses the fp16 loss scale


@dataclass(frozen=True)
class Cause:
    name: str  # the stuck_cause value: results.csv, summary.json, the report
    meaning: str  # what is wrong, in one clause
    fix: str  # the usual fix, printed after the evidence
    doc: str  # what the metrics show when it fits: its row of the docs' cause table
    test: Callable[[Evidence], Optional[str]] = lambda e: None  # the evidence text when the cause fits, else None
    against: Callable[[Evidence], str] = lambda e: ""  # why it does not fit, for the `unknown` verdict
    variant: str = ""  # a second test of the same cause at another place in the walk (shares meaning and fix)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.variant})" if self.variant else self.name


def _smoothing(e: Evidence) -> Optional[str]:
    if e.ce_floor > e.go_line:
        return f"label_smoothing {e.label_smoothing:g} puts the CE floor at {e.ce_floor:.2f}, above the Go line {e.go_line:.2f}"
    return None


LABEL_SMOOTHING_TOO_HIGH = Cause(
    "label_smoothing_too_high",
    "with this label smoothing the smallest cross-entropy the head can reach is above the Go line",
    "lower label_smoothing (0.1 is the usual ReID value; the CE floor rises to log(C) as it nears 1)",
    f"the configured label smoothing puts the smoothed CE's floor above the Go line (0.95 for 400 classes: "
    f"{smoothed_ce_floor(0.95, 400):.2f} > {go_line(math.log(400), DEFAULT_CHANCE_MARGIN):.2f}): no head crosses it",
    _smoothing,
    lambda e: f"CE floor {e.ce_floor:.2f} (Go line {e.go_line:.2f})",
)

AMP_SKIPPED_STEPS = Cause(
    "amp_skipped_steps",
    "the fp16 GradScaler skipped most optimizer steps (inf/nan gradients), so the loss scale collapsed",
    "train in bf16 or fp32 (--set amp=bf16 or amp=off), or find the op that overflows",
    f"the fp16 GradScaler skipped at least {MOST:.0%} of the steps (inf/nan gradients, `skipped_steps`): the loss "
    "scale collapses and the weights do not move",
    lambda e: f"{e.skipped} of {e.steps} steps skipped, loss scale {e.loss_scale:g}" if e.skipped >= MOST * e.steps else None,
    lambda e: f"{e.skipped} of {e.steps} steps skipped",
)

# Every image of a batch gives the head the same features: nothing to tell identities apart by (and a BNNeck
# turns identical features into zeros, so the head's gradient vanishes too: tried before no_gradient).
FEATURES_COLLAPSED = Cause(
    "features_collapsed",
    "the features entering the head are the same for every image of a batch",
    "check the images reach the backbone (not blank or constant) and the backbone's output is not collapsed "
    "(a dead projection, features averaged over the batch)",
    f"the features entering the head barely differ between the images of a batch (`feature_spread` < "
    f"{COLLAPSED_SPREAD:g}): a collapsed backbone, blank images",
    lambda e: (
        f"feature spread across the batch {e.feature_spread:.2g} (other runs >= 0.18)"
        if e.feature_spread is not None and e.feature_spread < COLLAPSED_SPREAD
        else None
    ),
    lambda e: f"feature spread across the batch {'not reported' if e.feature_spread is None else f'{e.feature_spread:.2g}'}",
)

NO_GRADIENT = Cause(
    "no_gradient",
    "no gradient reaches the identity classifier",
    "look for detached features, torch.no_grad() or a frozen (requires_grad=False) head",
    "the classifier's gradient is zero at every step (detached features, `no_grad` code, a frozen head)",
    lambda e: f"classifier gradient norm 0 at all {e.steps} steps" if not e.grad_peak else None,
    lambda e: f"classifier gradient norm {e.grad_now:.3g}",
)

HEAD_NOT_IN_OPTIMIZER = Cause(
    "head_not_in_optimizer",
    "the classifier gets a gradient but its weights never change",
    "add the classifier and BNNeck parameters to an optimizer parameter group",
    "gradient reaches the classifier but its weights never change",
    lambda e: (
        f"classifier gradient norm {e.grad_now:.3g} yet its weights unchanged after {e.steps} steps"
        if e.moved <= STILL and not e.lr_zero_always  # a group holding the head at LR 0 from the start: lr_too_low
        else None
    ),
    lambda e: f"the head moved {e.moved:.1f}x",
)

# The head guard restored the head and lowered its LR after the CE ran away: the LR it trains at was chosen
# because the one before ran away (and its jumps back are no weight decay).
GUARD_LOWERED_LR = Cause(
    "guard_lowered_lr",
    "the head guard lowered the head LR after the CE ran away, and at the lowered LR the head moves too little",
    "pick a head_lr between the guard's last two (see its events), lengthen lr_warmup_steps, or set head_guard_factor nearer 1",
    f"the head moved < {FREE_MOVEMENT:g}x and the head guard lowered the LR (the CE had run away at the LR "
    "before): raising it is not the fix",
    lambda e: (
        f"head guard fired {e.guard_firings:g} time(s), each restoring the head and lowering its LR; the head moved "
        f"{e.moved:.2g}x its initial norm by step {e.steps} at {e.lrs}; {e.ce_text}"
        if e.moved < FREE_MOVEMENT and e.guard_firings
        else None
    ),
    lambda e: f"the head moved {e.moved:.1f}x (>= {FREE_MOVEMENT:g}x)" if e.guard_firings else "the head guard never fired",
)

LR_TOO_LOW = Cause(
    "lr_too_low",
    "the head learns, but its learning rate is too low to leave chance in time",
    "raise head_lr (on the synthetic default the learnable region starts near 2.5e-4)",
    f"gradient flows, the logits follow the weights, but the head moved less than {FREE_MOVEMENT:g}x its initial "
    "norm: its LR holds it back",
    lambda e: (
        f"head moved {e.moved:.2g}x its initial norm in {e.steps} steps at {e.lrs}; {e.ce_text}" if e.moved < FREE_MOVEMENT else None
    ),
    lambda e: f"the head moved {e.moved:.1f}x (>= {FREE_MOVEMENT:g}x: not held back)",
)

# The LR the optimizer applies to the head fell to 0 and stayed there: a scheduler zeroed it (not a slow LR),
# whatever the head did before, so tried before the causes that read how far it moved.
LR_ZEROED = dataclasses.replace(
    LR_TOO_LOW,
    variant="zeroed",
    doc="the LR applied to the head has been 0 for the last tenth of the run (a schedule zeroed it), however far "
    "the head moved before, or from the first step (a group holds the head at LR 0)",
    test=lambda e: (
        f"the head's applied LR has been 0 since step {e.lr_zero_since} ("
        + ("its optimizer group's LR is 0" if e.lr_zero_always else "a schedule zeroed it")
        + f") at {e.lrs}; the head moved {e.moved:.2g}x its initial norm"
        if (e.lr_peak > 0 or e.lr_zero_always) and e.lr_zero_tail >= e.recent_rows
        else None
    ),
    against=lambda e: "the head's applied LR was not held at 0"
    + (f" (0 only for its last {e.lr_zero_tail} rows)" if e.lr_zero_tail else ""),
)

# The head barely moved: its steps are a sliver of the LR the optimizer applies (AdamW's eps swamps a gradient
# made tiny), or full-sized and undone each step (weight decay), or the LR itself is small (lr_too_low, last):
# the update size per LR and the path per distance tell the three apart.
GRADIENT_TOO_SMALL = Cause(
    "gradient_too_small",
    "the optimizer moves the head by a tiny fraction of its LR: the gradient it gets is too small for AdamW's eps",
    "do not divide the loss by a large constant; raise grad_clip or set it to 0 (off)",
    f"the head moved < {FREE_MOVEMENT:g}x and the optimizer moves each head weight by a tiny fraction of the LR it "
    f"applies (`head_step_per_lr` < {TINY_STEP:g}; AdamW: 0.03-1): the gradient is too small for AdamW's eps (a "
    "loss divided by a large constant, gradients clipped to a tiny norm)",
    lambda e: (
        f"each head weight moved {e.step_per_lr:.2g} of the applied LR per step (AdamW: 0.03-1) at {e.lrs}; "
        f"classifier gradient norm {e.grad_now:.3g} before clipping"
        if e.moved < FREE_MOVEMENT and e.step_per_lr is not None and e.step_per_lr < TINY_STEP
        else None
    ),
    lambda e: f"its steps {'not reported' if e.step_per_lr is None else f'{e.step_per_lr:.2g} of the LR per step'}",
)

WEIGHT_DECAY_TOO_HIGH = Cause(
    "weight_decay_too_high",
    "the head takes full steps but is pulled back as far: weight decay or an L2 penalty holds it near zero",
    "lower the head's weight_decay (the default is 4e-5; AdamW decays each weight by head_lr x weight_decay per step) "
    "or the L2 penalty on the classifier",
    f"the head moved < {FREE_MOVEMENT:g}x yet its path (the sum of its steps, `head_update`) is >= {HELD_BACK:g}x "
    "its distance from the start: weight decay or an L2 penalty pulls it back",
    lambda e: (
        f"the head's path is {e.path:.0f}x its distance from the start (it moved {e.moved:.2g}x its initial norm) at {e.lrs}"
        if e.moved < FREE_MOVEMENT and e.path is not None and e.path >= HELD_BACK
        else None
    ),
    lambda e: f"its path {'not reported' if e.path is None else f'{e.path:.1f}x its distance'}",
)


def memorising(ce_ema: float, unseen_ce: float, unseen_best: float, ce_ema_at_unseen: float, line: float) -> bool:
    """The training CE is at or below the Go line ``line`` and `MEMORISED_GAP` below the unseen-image CE, now and when
    that was measured, and the unseen-image CE has never been below the line. The test of `LABELS_MEMORISED`, and what
    the chance-level rule reads of a run whose ce_ema is below the line (`reid_core.chance`). False when no unseen_ce
    was reported."""
    return (
        ce_ema <= line  # the training CE fell: a head trained on noise is far off on real held-out images, not memorising
        and math.isfinite(unseen_best)
        and unseen_best > line
        and ce_ema <= unseen_ce - MEMORISED_GAP
        and ce_ema_at_unseen <= unseen_ce - MEMORISED_GAP
    )


# Training CE falls, the CE on images of the same people the head never trained on does not: each training image is
# remembered with its id, and nothing that tells one person from another is learnt (an annotation join that gave each
# image a fixed wrong id: the ids permuted among the images). Needs `unseen_ce` (reid_core.unseen); tried before the
# causes that read a CE at chance, since here the training CE is not.
LABELS_MEMORISED = Cause(
    "labels_memorised",
    "the training CE falls but the CE on held-out images of the same identities stays at chance: the head memorises "
    "each image's id and learns nothing that carries to another image of that person",
    "check that each image's identity is its own (an annotation join that pairs images with the wrong ids, ids "
    "permuted among the images); the held-out slice is holdout_per_id images of each identity",
    f"the training `ce_ema` is below the Go line and at least {MEMORISED_GAP:g} nats below `unseen_ce` (identity CE on "
    "held-out images of the training identities, never trained on; at its last measurement and now), which has never "
    "been below the Go line: the images are memorised with ids that do not belong to them",
    lambda e: (
        f"ce_ema {e.ce_ema:.3f} on the images it trains on, unseen_ce {e.unseen_ce:.3f} on held-out images of the same "
        f"identities (lowest {e.unseen_best:.3f}, never below the Go line {e.go_line:.2f}; chance {e.chance:.3f})"
        if memorising(e.ce_ema, e.unseen_ce, e.unseen_best, e.ce_ema_at_unseen, e.go_line)
        else None
    ),
    lambda e: (
        "no unseen_ce reported (holdout_per_id=0, or a loop that does not measure it)"
        if not math.isfinite(e.unseen_best)
        else f"unseen_ce {e.unseen_ce:.3f} (lowest {e.unseen_best:.3f}) against ce_ema {e.ce_ema:.3f}"
    ),
)


def _bounded(e: Evidence) -> bool:
    """The weights grow, the logits do not follow: the spread per unit weight norm collapses (a cosine classifier),
    or the gradient dies while CE sits at chance (squashed logits: tanh, clamp). A head that once spread its logits
    wider and let them shrink (to < LOGIT_DECAY of the peak) was not bounded: it fits noise (shuffled labels,
    images without identity) or smoothed targets, and its spread died away; bounded logits cannot be confidently
    wrong either."""
    return (
        e.logit_std < BOUNDED_STD
        and e.ce_ema <= e.chance + WRONG_NOW
        and e.logit_std >= LOGIT_DECAY * e.logit_std_peak
        and (
            (e.moved >= 1.0 and e.gain <= GAIN_COLLAPSE)
            or (e.moved >= FREE_MOVEMENT and e.grad_ratio <= GRAD_COLLAPSE and e.ce_ema <= e.chance + FLAT_CE)
        )
    )


BOUNDED_LOGITS = Cause(
    "bounded_logits",
    "the identity logits stay bounded while the weights grow",
    "feed the raw (un-normalised) features through the BNNeck, scale a cosine classifier, do not squash logits (tanh, clamp)",
    f"the logit std stays under {BOUNDED_STD:g} nat while the weights grow: the logit spread per unit of weight "
    f"norm falls to {GAIN_COLLAPSE:g} of its peak or less (a cosine or normalised classifier with no scale), or the "
    f"head moved >= {FREE_MOVEMENT:g}x and its gradient fell to {GRAD_COLLAPSE:g} of its first value (squashed: "
    f"tanh, clamp); and the logits never spread {1 / LOGIT_DECAY:g}x wider, and CE is not confidently wrong (more "
    f"than {WRONG_NOW:g} above chance)",
    lambda e: (
        f"head moved {e.moved:.1f}x its initial norm but logit std is {e.logit_std:.3g}; logit spread per unit "
        f"weight norm x{e.gain:.2g} of its peak, classifier gradient x{e.grad_ratio:.2g} of its first value"
        if _bounded(e)
        else None
    ),
    lambda e: (
        f"logit std {e.logit_std:.3g} (peak {e.logit_std_peak:.3g}), spread per unit weight norm x{e.gain:.2g} of its "
        f"peak, gradient x{e.grad_ratio:.2g} of its first (bounded: std < {BOUNDED_STD:g}, >= {LOGIT_DECAY:g} of its "
        f"peak, and either <= {GAIN_COLLAPSE})"
    ),
)

# Free weights, CE not below chance and once well above it: a head fitting each batch's noise is confidently
# wrong on the next (shuffled labels: ce_ema 6.3-6.4 for chance 5.99); a healthy start never rises above.
LABELS_NO_SIGNAL = Cause(
    "labels_no_signal",
    "the head's weights move freely but CE does not leave chance",
    "check that labels belong to their images (misaligned or shuffled labels) and that augmentation "
    "leaves a person recognisable",
    f"the weights move far (>= {FREE_MOVEMENT:g}x their initial norm) yet CE, smoothed and raw, has not left chance "
    f"(by {FLAT_CE:g}), and rose {OVERSHOOT:g} nats above it (a head fitting noise is confidently wrong: shuffled or "
    "misaligned labels, or images that no longer show who they are)",
    lambda e: (
        f"head moved {e.moved:.1f}x its initial norm, {e.ce_text}"
        if e.moved >= FREE_MOVEMENT
        and e.ce_ema >= e.chance - FLAT_CE
        and e.recent_ce >= e.chance - FLAT_CE
        and e.ce_ema_peak >= e.chance + OVERSHOOT
        else None
    ),
    lambda e: (
        f"CE left chance ({e.ce_text}, recent raw ce below {e.chance - FLAT_CE:.2f})"
        if e.recent_ce < e.chance - FLAT_CE or e.ce_ema < e.chance - FLAT_CE
        else f"ce_ema never rose above chance + {OVERSHOOT} (a head fitting noise would)"
    ),
)

# The walk: the config first (it forbids crossing the Go line), then what stops the head from moving at all,
# then why it moves too little, then why moving does not help; lr_too_low only once nothing else explains a
# head that moved little. A wrong name sends the user hunting a bug they do not have, so nothing is a fallback.
WALK: tuple[Cause, ...] = (
    LABEL_SMOOTHING_TOO_HIGH,
    AMP_SKIPPED_STEPS,
    FEATURES_COLLAPSED,
    NO_GRADIENT,
    HEAD_NOT_IN_OPTIMIZER,
    GUARD_LOWERED_LR,
    LR_ZEROED,
    GRADIENT_TOO_SMALL,
    WEIGHT_DECAY_TOO_HIGH,
    LABELS_MEMORISED,
    BOUNDED_LOGITS,
    LABELS_NO_SIGNAL,
    LR_TOO_LOW,
)
CAUSES: dict[str, Cause] = {c.name: c for c in WALK if not c.variant}  # name -> declaration, in walk order

UNKNOWN = "unknown"  # no known cause fits: said with the evidence against each, never a guess dressed as a cause
# The seed's checklist, for a run no known cause fits: where their real bugs were.
CHECKLIST = (
    "the classifier sits after the BNNeck on the raw encode_image(normalize=False) features",
    "no torch.no_grad() or .detach() between the features and the logits",
    "the classifier and BNNeck are in an optimizer parameter group",
    "labels are 0..C-1 and belong to their images",
)
NO_CAUSE = Cause(
    UNKNOWN,
    "no known cause fits the metrics",
    "check that " + "; ".join(CHECKLIST),
    "none of these fits: the evidence against each, and the seed's checklist (classifier after the BNNeck on the "
    "raw features, no `no_grad`/`detach` before the logits, BNNeck and classifier in an optimizer group, labels "
    "`0..C-1` belonging to their images)",
    lambda e: f"head moved {e.moved:.1f}x its initial norm at {e.lrs}, logit std {e.logit_std:.3g}, {e.ce_text}",
)
DECLARED: dict[str, Cause] = {**CAUSES, UNKNOWN: NO_CAUSE}  # every stuck_cause value -> its declaration


def walk(evidence: Evidence) -> tuple[Cause, str]:
    """The first cause of `WALK` whose test fits, with its evidence text; `NO_CAUSE` when none does."""
    for cause in WALK:
        text = cause.test(evidence)
        if text is not None:
            return cause, text
    return NO_CAUSE, NO_CAUSE.test(evidence)


def against_each(evidence: Evidence) -> tuple[str, ...]:
    """For a run no cause fits: ``"cause: why not"`` for each of `WALK`, in its order."""
    return tuple(f"{c.label}: {c.against(evidence)}" for c in WALK)
