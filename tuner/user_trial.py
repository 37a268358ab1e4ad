"""The function trainable for a user's training function: one Ray Tune trial = one ``fn(config, report)`` call.

The worker imports the function by name (``settings.trainable``), from the folder the driver
found it in (``settings.trainable_root``, put on the worker's ``sys.path``: a module in the
user's own repository needs no install on a local cluster, or on one whose nodes share that
folder; elsewhere install it or ship it with Ray's ``runtime_env``). ``report`` is a
`reid_core.contract.Reporter` forwarding to ``ray.tune.report``, checkpoints included.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from ray import tune
from ray.tune import Checkpoint

from reid_core.contract import Reporter, call, load_trainable
from tuner._ray_compat import FastReporting
from tuner.trainable import CHECKPOINT_FILE, _failing_at, _last_checkpoint, with_node_id


def user_trial(
    sampled: dict[str, Any],
    base: dict[str, Any],
    spec: str,
    root: Optional[str] = None,
    max_samples: Optional[float] = None,
    threads: int = 1,
    checkpoint_every: int = 0,
    inject_fault: Optional[dict[str, Any]] = None,
) -> None:
    """Run the function ``spec`` names (package.module:function) on the user's config with the sampled values on top, until it returns or has
    seen ``max_samples`` images; a retry continues from the newest checkpoint it saved, if any."""
    fn = load_trainable(spec, root)
    resume = _last_checkpoint()
    report = with_node_id(tune.report)  # as our own trials: every result names its Ray node
    if inject_fault and resume is None and sampled.get(inject_fault["key"]) == inject_fault["value"]:
        report = _failing_at(inject_fault["step"], report)

    def forward(metrics: dict[str, Any], state: Optional[dict[str, Any]]) -> None:
        if state is None:
            report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / CHECKPOINT_FILE)
            report(metrics, checkpoint=Checkpoint.from_directory(folder))

    reporter = Reporter(forward, max_samples=max_samples, resume=resume, checkpoint_every=checkpoint_every)
    call(fn, {**base, **sampled}, reporter, threads)


user_trial.__mixins__ = (FastReporting,)  # type: ignore[attr-defined]  # read by Ray's wrap_function
