"""The vocabulary every part shares: the metrics a training step reports and why a run ended.

Defined once and imported everywhere (code, CSV columns, tables, docs); no module types these
strings by hand. Pure data: importing it pulls in neither torch nor Ray.
"""

from __future__ import annotations

# Every metric reported per optimizer step, in metrics.csv column order. A metric that is a
# config field's value would carry the field's name; the LRs the optimizer actually applied
# (warm-up and cosine included) are `<field>_applied`, read from its parameter groups.
STEP_METRICS = (
    "step",  # optimizer steps taken
    "samples",  # training images seen (the search's time axis: equal compute whatever the accumulation)
    "ce",  # identity cross-entropy, mean over the step's micro-batches
    "ce_ema",  # exponential moving average of ce: what stopping decisions read
    "sdm",  # SDM image-text loss (0 while the text encoder is skipped)
    "loss",  # ce + sdm_weight * sdm
    "sdm_weight",  # current SDM weight (0 during the CE-only phase)
    "head_lr_applied",  # LR the optimizer applied to BNNeck + classifier at this step (head_lr x schedule)
    "backbone_lr_applied",  # LR the optimizer applied to the open_clip encoders (backbone_lr x schedule)
    "head_weight_norm",  # Frobenius norm of the classifier weight
    "head_weight_change",  # |classifier weight - its step-0 value| / |step-0 value|: how far the head has moved
    "head_grad_norm",  # norm of the classifier weight's gradient (unscaled, before clipping)
    "feature_norm",  # mean L2 norm of the raw image features entering the BNNeck
    "logit_std",  # standard deviation of the identity logits (bounded logits stay tiny)
    "head_update",  # |classifier weight change this step| / |weight|: how far one optimizer step moved the head
    "head_step_per_lr",  # RMS change per classifier weight this step / head_lr_applied (AdamW: ~0.1-0.4; 0 at LR 0)
    "feature_spread",  # |features - their batch mean| / |features| entering the head (0: every image alike)
    "head_measured_step",  # the step the head statistics above were measured at (every monitor_every steps)
    "loss_scale",  # fp16 GradScaler scale (1 when not in fp16)
    "skipped_steps",  # optimizer steps skipped so far because of inf/nan gradients (fp16)
    "chance_ce",  # log(num_classes): the CE of a head that knows nothing
    "head_guard_firings",  # times so far the head_guard lowered the head LR (CE ran away; reid_core.head_lr)
    "head_lr_raises",  # times so far the progressive schedule (head_lr_raise) raised the head LR
    "images_per_s",  # training throughput of this step
)
# The run's own head-LR changes (reid_core.head_lr), running counts in every step's metrics: guard firings, raises.
GUARD_FIRINGS, LR_RAISES = HEAD_LR_COUNTS = ("head_guard_firings", "head_lr_raises")
EVAL_METRICS = ("val_r1", "val_r5", "val_r10", "val_map", "val_minp")  # retrieval on the evaluated split
METRIC_COLUMNS = STEP_METRICS + EVAL_METRICS

# Metric names before 0.2, as older result.json / metrics.csv files hold them.
RENAMED_METRICS = {"lr_head": "head_lr_applied", "lr_backbone": "backbone_lr_applied"}

# Why a run or trial ended: one value per run, recorded per trial in results.csv.
COMPLETED = "completed"  # trained its whole budget
ASHA = "asha"  # cut at a rung by ASHA (ranked below its peers)
STUCK = "stuck_at_chance"  # the chance-level rule: above the Go line and not clearly falling after the grace window
DIVERGED = "diverged"  # the loss became NaN/inf
ERROR = "error"  # the trial raised
UNFINISHED = "unfinished"  # still running, or interrupted
END_REASONS = (COMPLETED, ASHA, STUCK, DIVERGED, ERROR, UNFINISHED)
