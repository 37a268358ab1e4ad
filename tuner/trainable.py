"""The function trainable: one Ray Tune trial = one `reid_core.train.train` run.

It lives in the package (Ray's workers import it by name; a trainable defined
in a script or test module cannot be imported by them).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from ray import tune
from ray.tune import Checkpoint
from ray.tune.result import DONE, RESULT_DUPLICATE, SHOULD_CHECKPOINT

from reid_core.config import TrainConfig
from reid_core.train import EVAL_METRICS, train


def trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> TrainConfig:
    """The trial's complete config: the search's base config plus the sampled values.

    ``base['max_steps']`` is the budget in optimizer steps *at accumulation 1*: a trial
    with ``grad_accum_steps=k`` trains for ``ceil(max_steps / k)`` steps, so every
    trial may see the same number of images and trials compare at equal compute.
    """
    base_cfg = TrainConfig.from_dict(base)
    cfg = TrainConfig.from_dict(sampled, base=base_cfg)
    steps = math.ceil(base_cfg.max_steps * base_cfg.grad_accum_steps / cfg.grad_accum_steps)
    return TrainConfig.from_dict({"max_steps": max(1, steps)}, base=cfg)


CHECKPOINT_FILE = "trainer.pt"
RESULT_BUFFER_S = 0.2  # seconds a trial's actor collects results before the driver gets them together
RESULT_BUFFER_LENGTH = 1000  # results per batch at most


class FastReporting:
    """Mixin for the trial's function trainable (Ray's ``__mixins__`` hook): reports that cost ~0.5 ms.

    Every optimizer step is one ``tune.report``. Out of the box, a Ray function trainable
    reports synchronously: after each report the training thread waits until the driver has
    processed the result and asked the actor for the next one, ~3 ms here, every step
    (``benchmarks/harness_overhead.py``). Two changes, neither of which drops a result:

    - **Asynchronous reporting**, as Ray Train's own workers do: the training thread goes on with
      the next step as soon as the actor has taken its result, instead of when the driver asks
      for the next. A trial runs at most one step ahead of the results the driver has judged.
    - **Result buffering** (``TUNE_RESULT_BUFFER_LENGTH`` > 1, which ``tuner.search`` sets): the
      actor collects results for ``RESULT_BUFFER_S`` and the driver processes them in order, each
      one logged and judged by the stoppers and ASHA as before; a trial stopped at a result keeps
      no later one. Ray 2.60's controller calls ``train_buffered(buffer_length, buffer_time_s)``
      while the method takes ``(buffer_time_s, max_buffer_length)``; with the two swapped every
      batch ends after its first result, so ``train_buffered`` below uses ``RESULT_BUFFER_S`` and
      ``RESULT_BUFFER_LENGTH`` whatever it is passed. A batch also ends at a checkpoint (Ray's
      rule), so no checkpoint is ahead of the results the driver has seen.

    Together: a stopped trial computes up to ``RESULT_BUFFER_S`` plus one step past its verdict,
    and those steps are dropped. Where a Ray version lacks the session flag, reporting stays
    synchronous: slower, still correct.
    """

    def setup(self, config: dict[str, Any]) -> None:
        super().setup(config)  # type: ignore[misc]  # FunctionTrainable.setup opens the session
        self._pending_error: Optional[Exception] = None  # raised by the next train_buffered call
        from ray.train._internal.session import get_session

        session = get_session()
        if session is not None and hasattr(session, "synchronous_result_reporting"):
            session.synchronous_result_reporting = False

    def train_buffered(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Ray's ``Trainable.train_buffered`` loop with our bounds, and no result lost to an error.

        Ray's loop loses the batch collected so far when the trial raises; here the batch goes to
        the driver first and the error is raised by the next call, so a failed trial's
        ``result.json`` ends at its last good step.
        """
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        results: list[dict[str, Any]] = []
        send_at = time.time() + RESULT_BUFFER_S
        while not results or time.time() < send_at:
            try:
                result = self.train()  # type: ignore[attr-defined]
            except Exception as err:
                if not results:
                    raise
                self._pending_error = err
                break
            results.append(result)
            if (
                result.get(DONE, False)
                or result.get(SHOULD_CHECKPOINT, False)
                or result.get(RESULT_DUPLICATE)
                or len(results) >= RESULT_BUFFER_LENGTH
            ):
                break
        return results


def train_trial(
    sampled: dict[str, Any],
    base: dict[str, Any],
    metric: str = "ce_ema",
    eval_at_samples: Sequence[float] = (),
    checkpoint_every: int = 0,
    inject_fault: Optional[dict[str, Any]] = None,
) -> None:
    """Run one trial, forwarding every optimizer step's metrics to ``ray.tune.report``.

    ``eval_at_samples``: extra evaluations (the ASHA rungs, when the search optimises a retrieval metric).
    ``checkpoint_every``: steps between checkpoints (trainer state: weights, optimizer, step, RNG,
    data position); a trial Ray restarts after a failure continues from its last one.
    ``inject_fault``: a testing hook (``{"step": N, "key": K, "value": V}``): the first attempt of a
    trial whose ``K`` is ``V`` raises at step N, so the reliability tests can fail a real trial.
    """
    cfg = trial_config(base, sampled)
    report = carry_evaluation(tune.report) if metric in EVAL_METRICS else tune.report
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
        checkpoint=checkpoint if checkpoint_every else None,
        checkpoint_every=checkpoint_every,
    )


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
