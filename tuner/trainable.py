"""The function trainable: one Ray Tune trial = one call of the training function under the contract.

The same trial for our function and a user's (`reid_core.job`): the worker imports the function by
name (``spec``; a user's from ``root``, the folder the driver found it in, put on the worker's
``sys.path``: a module in the user's own repository needs no install on a local cluster, or on one
whose nodes share that folder; elsewhere install it or ship it with Ray's ``runtime_env``), builds the
trial's config, and calls it with a `reid_core.contract.Reporter` forwarding every step to
``ray.tune.report``, checkpoints included. It lives in the package: Ray's workers import it by name.
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import ray
import torch
from ray import tune
from ray.tune import Checkpoint

from reid_core import faults
from reid_core.contract import Reporter, call
from reid_core.errors import UserError
from reid_core.job import job_for
from reid_core.schema import EVAL_METRICS
from tuner._ray_compat import with_fast_reporting
from tuner.lineage import perturbation_due

CHECKPOINT_FILE = "trainer.pt"  # the function's checkpoint state inside each Ray checkpoint


@with_fast_reporting
def train_trial(
    sampled: dict[str, Any],
    base: dict[str, Any],
    spec: Optional[str] = None,
    root: Optional[str] = None,
    max_samples: Optional[float] = None,
    threads: int = 1,
    metric: str = "ce_ema",
    eval_at_samples: Sequence[float] = (),
    checkpoint_every: int = 0,
    inject_fault: Optional[dict[str, Any]] = None,
    pbt: Optional[dict[str, float]] = None,
) -> None:
    """Run one trial until the function returns or has seen ``max_samples`` images.

    ``eval_at_samples``: images seen where the search compares trials by a retrieval metric (its ASHA rungs).
    ``checkpoint_every``: steps between checkpoints; a trial Ray restarts after a failure continues from its
    newest one (``report.resume``). ``inject_fault``: a testing hook (``{"step": N, "key": K, "value": V}``):
    the first attempt of a trial whose ``K`` is ``V`` raises at step N, so the reliability tests can fail a
    real trial. ``pbt``: ``{"burn_in", "interval"}`` in images under ``--scheduler pbt``: the trial
    checkpoints (and, for a retrieval metric, evaluates) at every result PBT looks at
    (`tuner.lineage.perturbation_due`).
    """
    job = job_for(spec, root)
    fn = job.function()
    config = job.trial_config(base, sampled)
    checkpoint_at = None
    if pbt:
        checkpoint_at = functools.partial(_pbt_due, burn_in=pbt["burn_in"], interval=pbt["interval"], max_samples=max_samples)
        if metric in EVAL_METRICS:
            count = math.ceil((max_samples - pbt["burn_in"]) / pbt["interval"]) if max_samples else 0
            eval_at_samples = [pbt["burn_in"] + k * pbt["interval"] for k in range(count)]
    report = with_node_id(tune.report)
    report = carry_evaluation(report) if metric in EVAL_METRICS else report
    resume = _last_checkpoint()
    faults.plant((inject_fault or {}).get("plant"))  # none unless this search plants one (a worker may be reused)
    if inject_fault and "step" in inject_fault and resume is None and sampled.get(inject_fault["key"]) == inject_fault["value"]:
        report = _failing_at(inject_fault["step"], report)

    def forward(metrics: dict[str, Any], state: Optional[dict[str, Any]]) -> None:
        if state is None:
            report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / CHECKPOINT_FILE)
            report(metrics, checkpoint=Checkpoint.from_directory(folder))

    reporter = Reporter(
        forward, max_samples=max_samples, resume=resume, checkpoint_every=checkpoint_every, checkpoint_at=checkpoint_at,
        eval_at_samples=eval_at_samples,
    )  # fmt: skip
    call(fn, config, reporter, threads)


def run_preflight(spec: Optional[str], root: Optional[str], config: dict[str, Any], head_lr: Optional[float],
                  threads: int) -> tuple[list[str], Optional[str]]:  # fmt: skip
    """The job's pre-flight where a trial runs (``--preflight-on trial``): ``(lines it said, its error or None)``."""
    lines: list[str] = []
    try:
        job_for(spec, root).preflight(config, head_lr=head_lr, threads=threads, log=lines.append)
    except UserError as err:  # a PreflightError too: its one line, for the driver to raise
        return lines, str(err)
    return lines, None


def _pbt_due(metrics: Mapping[str, Any], burn_in: float, interval: float, max_samples: Optional[float]) -> bool:
    """PBT looks at this result (the first of a new round; the trial checkpoints there): `tuner.lineage.perturbation_due`
    in the result's own images per step."""
    step, samples = metrics["step"], metrics["samples"]
    budget_steps = math.ceil(max_samples / (samples / step)) if max_samples else math.inf
    return perturbation_due(step, samples / step, burn_in, interval, budget_steps)


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
