"""Pre-flight: seconds of checks before hours of trials.

Run on the real data and model config, in the driver, before any trial starts
(``python -m tuner.search``) or before training (``python -m reid_core.train
--preflight``). Each failure is a `PreflightError`: one line naming the cause
and the usual fix. If the overfit check fails, no trial of the search could
learn, and the search stops before it starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Callable, Optional

import torch

from reid_core.config import TrainConfig
from reid_core.data import ReIDData, load_data
from reid_core.chance import go_line
from reid_core.diagnostics import CAUSES, smoothed_ce_floor
from reid_core.errors import UserError
from reid_core.model import context_length
from reid_core.trainer import Trainer

OVERFIT_BATCHES = 8  # micro-batches replayed by the overfit run (256 images at batch 32)
OVERFIT_STEPS = 60  # optimizer steps of the overfit run
OVERFIT_TARGET = 0.5  # the overfit run must end at ce_ema <= OVERFIT_TARGET * log(C)
# Tried when the space's top head LR cannot overfit: the default's head LR. On the default it overfits
# to ce_ema ~0.3 in 60 steps; 1e-6 stays at chance (5.99). If it learns, the LR was the problem, not the data.
KNOWN_GOOD_HEAD_LR = 1e-2
GROWN_LOGIT_STD = 10.0  # the bounded-logit check scales the weights to this logit std first (nats)


class PreflightError(UserError):
    """A pre-flight check failed; the message names the cause and the fix."""

    def __init__(self, cause: str, detail: str, fix: Optional[str] = None):
        self.cause = cause
        super().__init__(f"pre-flight: {cause}: {detail}; fix: {fix or CAUSES[cause].fix}")


Build = Callable[[TrainConfig, ReIDData], Trainer]


def preflight(
    cfg: TrainConfig,
    overfit_head_lr: Optional[float] = None,
    log: Optional[Callable[[str], None]] = None,
    build: Build = Trainer,
) -> float:
    """Run every check; raise `PreflightError` (or `UserError` for bad data) on the first failure.

    ``overfit_head_lr``: the most favourable head LR the search will try (default ``cfg.head_lr``).
    ``build``: makes each Trainer checked (``benchmarks/diagnosis.py`` plants its faults in them).
    Returns the seconds it took.
    """
    started = time.perf_counter()
    cfg = dataclasses.replace(cfg, device="cpu" if not torch.cuda.is_available() else cfg.device)
    data = load_data(cfg, context_length(cfg))  # labels inside [0, C-1], C consistent with the data
    _check_data(data, cfg)
    floor, line = smoothed_ce_floor(cfg.label_smoothing, data.num_classes), go_line(math.log(data.num_classes))
    if floor > line:
        raise PreflightError(
            "label_smoothing_too_high", f"label_smoothing {cfg.label_smoothing:g} puts the CE floor at {floor:.2f}, above the Go line {line:.2f}"
        )
    _check_wiring(build(cfg, data))
    ce = _check_overfit(cfg, data, overfit_head_lr or cfg.head_lr, build)
    took = time.perf_counter() - started
    (log or (lambda s: None))(
        f"pre-flight passed in {took:.1f}s: {data.num_classes} identities, labels in range, every trainable "
        f"parameter in the optimizer, gradient reaches the head, logits unbounded, overfit ce_ema {ce:.2f} "
        f"(chance {math.log(data.num_classes):.2f})"
    )
    return took


def _check_data(data: ReIDData, cfg: TrainConfig) -> None:
    counts = torch.bincount(data.labels, minlength=data.num_classes)
    present = int((counts > 0).sum())
    if present < 2:
        raise UserError(f"pre-flight: the training split has {present} identity; identity CE needs at least 2")
    if int((counts >= 2).sum()) < min(present, 2):
        raise UserError(
            "pre-flight: no identity has two training images; SDM and identity learning need repeated identities"
        )


def _check_wiring(trainer: Trainer) -> None:
    model, optimizer = trainer.model, trainer.optimizer
    # Every trainable parameter, head included, must be in an optimizer parameter group.
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in in_optimizer]
    if missing:
        raise PreflightError(
            "head_not_in_optimizer",
            f"{len(missing)} trainable parameters are in no optimizer group ({', '.join(missing[:3])})",
        )
    head = model.classifier.weight
    if not head.requires_grad or id(head) not in in_optimizer:
        raise PreflightError("no_gradient", "the classifier weight is frozen (requires_grad=False)")

    # The labels the training loop feeds (the data set's were checked on loading; a loop may remap them).
    images, labels, _ = next(trainer.stream)
    classes = head.shape[0]
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise PreflightError(
            "labels_out_of_range",
            f"the first batch's labels span [{int(labels.min())}, {int(labels.max())}] but the classifier has {classes} rows",
            fix=f"map identity ids to 0..{classes - 1} (sorted raw ids) and size the classifier to the identities",
        )

    # One forward/backward must give the classifier a non-zero gradient.
    optimizer.zero_grad(set_to_none=True)
    try:
        trainer.backward(sdm_weight=0.0)
    except RuntimeError as err:  # e.g. "element 0 of tensors does not require grad": logits made under no_grad
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PreflightError("no_gradient", f"backward through the identity loss failed: {first}") from None
    grad = head.grad
    optimizer.zero_grad(set_to_none=True)
    if grad is not None and not torch.isfinite(grad).all() and trainer.scaler.is_enabled():
        raise PreflightError(
            "amp_skipped_steps", "one scaled forward/backward left the classifier's gradient inf/NaN: GradScaler skips such steps"
        )
    if grad is None or not torch.isfinite(grad).all() or grad.norm().item() == 0.0:
        raise PreflightError("no_gradient", "one forward/backward left the classifier's gradient zero, non-finite or missing")

    # Logits must be able to grow. The weights are first scaled until a linear head's logits would spread
    # ~10 nats (a squashing op such as clamp or softmax is inert at the init's tiny logits), then 4x more:
    # a linear head's spread follows; a bounded one (cosine, clamp, tanh, softmax) stays put.
    saved = head.detach().clone()
    with torch.no_grad():
        model.eval()
        try:
            features = model.encode_image(images)
            base = model.identity_logits(features).float().std().item()
            head.mul_(GROWN_LOGIT_STD / max(base, 1e-12))
            spread = model.identity_logits(features).float().std().item()
            head.mul_(4.0)
            spread_scaled = model.identity_logits(features).float().std().item()
        finally:
            head.copy_(saved)
            model.train()
    if not spread_scaled >= 2.0 * spread:
        raise PreflightError(
            "bounded_logits",
            f"4x the classifier's weights moved the logit std only from {spread:.3g} to {spread_scaled:.3g}",
        )


def _check_overfit(cfg: TrainConfig, data: ReIDData, head_lr: float, build: Build = Trainer) -> float:
    """A few hundred images, the best head LR, a short run: CE must fall well below chance.

    If it does not, the same run at `KNOWN_GOOD_HEAD_LR` tells a head LR too low (that one learns:
    the message names ``head_lr``) from labels, head or data that nothing can learn from.
    """
    ce, chance, images = _overfit_ce(cfg, data, head_lr, build)
    if _learned(ce, chance):
        return ce
    target = OVERFIT_TARGET * chance
    tried = (
        f"{OVERFIT_STEPS} steps over the same {images} images at head_lr {head_lr:.2g} left ce_ema at {ce:.2f} "
        f"(chance {chance:.2f}, needed <= {target:.2f})"
    )
    if head_lr < KNOWN_GOOD_HEAD_LR:
        good_ce, _, _ = _overfit_ce(cfg, data, KNOWN_GOOD_HEAD_LR, build)
        if _learned(good_ce, chance):
            raise PreflightError(
                "lr_too_low",
                f"{tried}; head_lr {KNOWN_GOOD_HEAD_LR:g} reached {good_ce:.2f}, so head_lr {head_lr:.2g} is too low",
                fix=f"raise head_lr (the top of the search space's range) from {head_lr:.2g} to at least {KNOWN_GOOD_HEAD_LR:g}",
            )
        tried += f", and head_lr {KNOWN_GOOD_HEAD_LR:g} left it at {good_ce:.2f}"
    raise PreflightError(
        "cannot_overfit",
        f"{tried}, so no trial could learn",
        fix="check the labels, the identity head and the data before searching (--skip-preflight to search anyway)",
    )


def _learned(ce: float, chance: float) -> bool:
    return math.isfinite(ce) and ce <= OVERFIT_TARGET * chance


def _overfit_ce(cfg: TrainConfig, data: ReIDData, head_lr: float, build: Build = Trainer) -> tuple[float, float, int]:
    """``(ce_ema, chance, images)`` after ``OVERFIT_STEPS`` steps replaying the same ``OVERFIT_BATCHES``
    micro-batches: a head that can learn at all memorises them; one that cannot stays at chance."""
    overfit_cfg = dataclasses.replace(
        cfg,
        head_lr=head_lr,
        grad_accum_steps=1,
        max_steps=OVERFIT_STEPS,
        ce_only_steps=OVERFIT_STEPS,  # CE only: the question is whether the identity head can learn
    )
    trainer = build(overfit_cfg, data)
    fixed = list(itertools.islice(trainer.stream, OVERFIT_BATCHES))
    trainer.stream = itertools.cycle(fixed)
    metrics = {}
    for _ in range(OVERFIT_STEPS):
        metrics = trainer.train_step()
    return metrics["ce_ema"], trainer.chance_ce, sum(len(batch[1]) for batch in fixed)
