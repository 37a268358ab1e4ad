"""The function trainable: one Ray Tune trial = one `reid_core.train.train` run.

It lives in the package (Ray's workers import it by name; a trainable defined
in a script or test module cannot be imported by them).
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import ray
import torch
from ray import tune
from ray.tune import Checkpoint

from reid_core.schema import EVAL_METRICS
from reid_core.train import train
from tuner._ray_compat import FastReporting
from tuner.lineage import perturbation_due
from tuner.settings import trial_config

CHECKPOINT_FILE = "trainer.pt"  # the Trainer's state_dict inside each Ray checkpoint


def train_trial(
    sampled: dict[str, Any],
    base: dict[str, Any],
    metric: str = "ce_ema",
    eval_at_samples: Sequence[float] = (),
    checkpoint_every: int = 0,
    inject_fault: Optional[dict[str, Any]] = None,
    pbt: Optional[dict[str, float]] = None,
) -> None:
    """Run one trial, forwarding every optimizer step's metrics to ``ray.tune.report``.

    ``eval_at_samples``: extra evaluations (the ASHA rungs, when the search optimises a retrieval metric).
    ``checkpoint_every``: steps between checkpoints (trainer state: weights, optimizer, step, RNG,
    data position); a trial Ray restarts after a failure continues from its last one.
    ``inject_fault``: a testing hook (``{"step": N, "key": K, "value": V}``): the first attempt of a
    trial whose ``K`` is ``V`` raises at step N, so the reliability tests can fail a real trial.
    ``pbt``: ``{"burn_in", "interval"}`` in images under ``--scheduler pbt``: the trial checkpoints (and, for
    a retrieval metric, evaluates) at every result PBT looks at (`tuner.lineage.perturbation_due`). Restored
    from another trial's checkpoint, it trains at its own (perturbed) LRs: `reid_core.trainer.Trainer.load_state_dict`.
    """
    cfg = trial_config(base, sampled)
    checkpoint_at = None
    if pbt:
        images, budget = cfg.images_per_step, cfg.max_steps
        checkpoint_at = functools.partial(
            perturbation_due, images_per_step=images, burn_in=pbt["burn_in"], interval=pbt["interval"], max_steps=budget
        )
        if metric in EVAL_METRICS:
            eval_at_samples = [step * images for step in range(1, budget) if checkpoint_at(step)]
    report = with_node_id(tune.report)
    report = carry_evaluation(report) if metric in EVAL_METRICS else report
    resume = _last_checkpoint()
    if inject_fault and resume is None and sampled.get(inject_fault["key"]) == inject_fault["value"]:
        report = _failing_at(inject_fault["step"], report)

    def checkpoint(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / CHECKPOINT_FILE)
            report(metrics, checkpoint=Checkpoint.from_directory(folder))

    train(
        cfg,
        report=report,
        eval_at_samples=eval_at_samples,
        resume=resume,
        checkpoint=checkpoint if checkpoint_every or pbt else None,
        checkpoint_every=checkpoint_every,
        checkpoint_at=checkpoint_at,
    )


def with_node_id(report: Callable[..., None]) -> Callable[..., None]:
    """Every result names the Ray node that computed it (``node_id``): nodes on one machine share an IP,
    and a trial that moved after its node was lost shows both."""
    node_id = ray.get_runtime_context().get_node_id()

    def forward(metrics: dict[str, Any], **kwargs: Any) -> None:
        report({**metrics, "node_id": node_id}, **kwargs)

    return forward


def _last_checkpoint() -> Optional[dict[str, Any]]:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        # weights_only: a checkpoint is tensors and numbers; nothing in it is unpickled as code
        return torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True, map_location="cpu")


def _failing_at(step: int, report: Callable[..., None]) -> Callable[..., None]:
    def forward(metrics: dict[str, Any], **kwargs: Any) -> None:
        if metrics["step"] == step:
            raise RuntimeError(f"injected fault at step {step}")
        report(metrics, **kwargs)

    return forward


train_trial.__mixins__ = (FastReporting,)  # type: ignore[attr-defined]  # read by Ray's wrap_function


def carry_evaluation(report: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Wrap ``report`` so that every result carries the latest evaluation (NaN before the first).

    Ray requires the search metric in every result, but retrieval is evaluated only now and
    then; ASHA reads it at its rungs, where the trial has just evaluated.
    """
    latest = {key: math.nan for key in EVAL_METRICS}

    def forward(metrics: dict[str, Any], **kwargs: Any) -> None:
        latest.update({key: metrics[key] for key in EVAL_METRICS if key in metrics})
        report({**metrics, **latest}, **kwargs)

    return forward
