"""The vocabulary every part shares: the metrics a training step reports and why a run ended.

Each word is declared once, as a `Term` with its line of documentation, and imported everywhere
(code, CSV columns, tables, and the docs' tables, generated from these declarations by
``python docs/generate.py``); no module types these strings by hand. Pure data: importing it
pulls in neither torch nor Ray.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    name: str  # the word, as it appears in metrics, CSV columns and tables
    doc: str  # what it means, in one line


def names(terms: tuple[Term, ...]) -> tuple[str, ...]:
    return tuple(t.name for t in terms)


# The run's own head-LR changes (reid_core.head_lr), running counts in every step's metrics: guard firings, raises.
GUARD_FIRINGS, LR_RAISES = HEAD_LR_COUNTS = ("head_guard_firings", "head_lr_raises")

# Every metric reported per optimizer step, in metrics.csv column order. A metric that is a
# config field's value would carry the field's name; the LRs the optimizer actually applied
# (warm-up and cosine included) are `<field>_applied`, read from its parameter groups.
STEP_METRIC_TERMS = (
    Term("step", "optimizer steps taken"),
    Term("samples", "training images seen (the search's time axis: equal compute whatever the accumulation)"),
    Term("ce", "identity cross-entropy, mean over the step's micro-batches"),
    Term("ce_ema", "exponential moving average of ce: what stopping decisions read"),
    Term("unseen_ce", "identity CE on a fixed batch of held-out images of the training identities, never trained on (eval "
         "mode, no grad; every unseen_every steps, repeated between, NaN before the first): falls with ce when the head learns, stays at chance "
         "when it memorises (labels_memorised)"),
    Term("sdm", "SDM image-text loss (0 while the text encoder is skipped)"),
    Term("loss", "ce + sdm_weight * sdm"),
    Term("sdm_weight", "current SDM weight (0 during the CE-only phase)"),
    Term("head_lr_applied", "LR the optimizer applied to BNNeck + classifier at this step (head_lr x schedule)"),
    Term("backbone_lr_applied", "LR the optimizer applied to the open_clip encoders (backbone_lr x schedule)"),
    Term("head_weight_norm", "Frobenius norm of the classifier weight"),
    Term("head_weight_change", "|classifier weight - its step-0 value| / |step-0 value|: how far the head has moved"),
    Term("head_grad_norm", "norm of the classifier weight's gradient (unscaled, before clipping)"),
    Term("feature_norm", "mean L2 norm of the raw image features entering the BNNeck"),
    Term("logit_std", "standard deviation of the identity logits (bounded logits stay tiny)"),
    Term("head_update", "|classifier weight change this step| / |weight|: how far one optimizer step moved the head"),
    Term("head_step_per_lr", "RMS change per classifier weight this step / head_lr_applied (AdamW: ~0.1-0.4; 0 at LR 0)"),
    Term("feature_spread", "|features - their batch mean| / |features| entering the head (0: every image alike)"),
    Term("head_measured_step", "the step the head statistics above were measured at (every monitor_every steps)"),
    Term("loss_scale", "fp16 GradScaler scale (1 when not in fp16)"),
    Term("skipped_steps", "optimizer steps skipped so far because of inf/nan gradients (fp16)"),
    Term("chance_ce", "log(num_classes): the CE of a head that knows nothing"),
    Term(GUARD_FIRINGS, "times so far the head_guard lowered the head LR (CE ran away; reid_core.head_lr)"),
    Term(LR_RAISES, "times so far the progressive schedule (head_lr_raise) raised the head LR"),
    Term("images_per_s", "training throughput of this step"),
    Term("data_wait_share", "share of the step's time spent waiting for its batches of images (above 0.1: the loader sets the pace)"),
)
STEP_METRICS = names(STEP_METRIC_TERMS)
# Retrieval on the evaluated split's unseen identities (text-to-image; image-to-image for Market-1501), at the
# end and every eval_every steps; between evaluations a result carries the latest (NaN before the first).
EVAL_METRIC_TERMS = (
    Term("val_r1", "R@1, percent: queries whose first-ranked gallery image is of their identity"),
    Term("val_r5", "R@5, percent: ... one of the first five"),
    Term("val_r10", "R@10, percent: ... one of the first ten"),
    Term("val_map", "mAP, percent: mean over the queries of the precision at each of their matches"),
    Term("val_minp", "mINP, percent: mean over the queries of (their matches) / (the rank of their last match)"),
)
EVAL_METRICS = names(EVAL_METRIC_TERMS)
METRIC_COLUMNS = STEP_METRICS + EVAL_METRICS

# Metric names before 0.2, as older result.json / metrics.csv files hold them.
RENAMED_METRICS = {"lr_head": "head_lr_applied", "lr_backbone": "backbone_lr_applied"}

# Why a run or trial ended: one value per run, recorded per trial in results.csv.
COMPLETED = "completed"
ASHA = "asha"
PBT = "pbt"
STUCK = "stuck_at_chance"
DIVERGED = "diverged"
ERROR = "error"
UNFINISHED = "unfinished"
HALTED = "halted"
END_REASON_TERMS = (
    Term(COMPLETED, "trained its whole budget"),
    Term(ASHA, "cut at a rung by the ASHA scheduler (ranked below its peers)"),
    Term(PBT, "stopped by the PBT scheduler"),
    Term(STUCK, "the chance-level rule: above the Go line and not clearly falling after the grace window, or before it when "
         "the early verdict's evidence says it cannot reach the line by its budget (docs/verdicts.md)"),
    Term(DIVERGED, "the loss became NaN/inf"),
    Term(ERROR, "the trial raised"),
    Term(HALTED, "stopped with the whole search when its stuck trials agreed on a cause no searched value fixes "
         "(docs/verdicts.md; --keep-going turns that off)"),
    Term(UNFINISHED, "still running, or interrupted"),
)
END_REASONS = names(END_REASON_TERMS)
