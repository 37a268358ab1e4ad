"""Our training function, ``train(cfg, report)``: the reference implementation of the contract.

One function serves the Ray Tune search (a trial's ``report`` forwards to ``ray.tune.report``) and the
plain run (``reid-tune train``: ``report`` writes metrics.csv and applies the chance-level rule the search
would, `reid_core.runner`). It never imports ray. The step itself is `reid_core.trainer.Trainer`.

    python -m reid_core.train --config best_config.json --out runs/rerun
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from reid_core.config import TrainConfig
from reid_core import faults
from reid_core.contract import BudgetSpent, Reporter
from reid_core.ending import diverged as is_diverged, end_reason
from reid_core.head_lr import GUARD, RAISE
from reid_core.runner import main as _run_main
from reid_core.shipped_weights import effective_pretrained
from reid_core.trainer import Trainer

Report = Callable[[dict[str, Any]], None]


def train(
    cfg: TrainConfig | Mapping[str, Any],
    report: Optional[Report] = None,
    *,
    log: Optional[Callable[[str], None]] = None,
    eval_at_samples: Optional[Sequence[float]] = None,
    resume: Optional[dict[str, Any]] = None,
    checkpoint: Optional[Callable[[dict[str, Any], dict[str, Any]], None]] = None,
    checkpoint_every: int = 0,
) -> dict:
    """Train ``cfg`` and return a summary; ``report(metrics)`` is called once per optimizer step.

    Under the harness ``report`` is a `reid_core.contract.Reporter`, and the run honours its hooks: it
    continues from ``report.resume``, hands ``report`` a checkpoint callable (the Reporter asks for the
    state only where it keeps one: ``--checkpoint-every``, PBT's perturbation points), evaluates at
    ``report.eval_at_samples`` and says what it does through ``report.log``. When the Reporter ends the
    run (`BudgetSpent`: the budget is spent, or the plain run stops a stuck one), it returns its summary.

    As a library call the keywords do the same: retrieval is evaluated every ``cfg.eval_every`` steps,
    at the end, and at the first step whose ``samples`` reach each of ``eval_at_samples`` (evaluating
    changes nothing in training: the curve is the same with or without it); every ``checkpoint_every``
    steps ``checkpoint(metrics, trainer_state)`` is called instead of ``report(metrics)``; ``resume``
    (such a state) continues that run where it stopped, on the same curve.

    Stops by itself when the loss becomes NaN/inf (the last report carries it). Raises `UserError` for
    bad data or config before the first step, so nothing is reported then.
    """
    started = time.perf_counter()
    if not isinstance(cfg, TrainConfig):  # the contract's config: a plain mapping of TrainConfig fields
        cfg = TrainConfig.from_dict(cfg)
    harness = isinstance(report, Reporter)
    if harness:
        resume = report.resume if resume is None else resume
        eval_at_samples = report.eval_at_samples if eval_at_samples is None else eval_at_samples
        log = report.log if log is None else log
    log = log or (lambda line: None)
    trainer = Trainer(cfg)
    faults.apply(trainer)  # a testing hook: nothing unless --inject-fault plant:KIND
    if resume is not None:
        trainer.load_state_dict(resume)
    data = trainer.data
    log(
        f"training {cfg.model} ({effective_pretrained(cfg.model, cfg.pretrained) or 'random init'}) on {data.name}: {len(data.labels)} images"
        + (f" ({len(data.unseen)} more held out, never trained on: unseen_ce)" if data.unseen is not None else "")
        + f", {data.num_classes} identities "
        f"(chance CE {trainer.chance_ce:.3f}), {cfg.max_steps} steps of {cfg.images_per_step} images "
        f"on {trainer.device}; {data.task} evaluation on {len(data.gallery)} {cfg.eval_split} images"
    )
    for note in data.notes:
        log(note)
    pending_evals = sorted(s for s in eval_at_samples or () if s > trainer.step * cfg.images_per_step)
    best_ce_ema = math.inf if resume is None else resume.get("best_ce_ema", math.inf)
    metrics: dict[str, Any] = {}
    message = ""
    logged = len(trainer.events)  # a resumed run's earlier head-LR changes were said before

    def state() -> dict[str, Any]:
        return {**trainer.state_dict(), "best_ce_ema": best_ce_ema}

    try:
        while trainer.step < cfg.max_steps:
            metrics = trainer.train_step()
            for event in trainer.events[logged:]:  # the guard fired, or the schedule raised the head LR
                log(event.line())
            logged = len(trainer.events)
            diverged = is_diverged(metrics)
            if diverged:
                message = f"loss became {metrics['loss']} at step {metrics['step']}; lower head_lr or backbone_lr, or set grad_clip"
            else:
                best_ce_ema = min(best_ce_ema, metrics["ce_ema"])
                due = False  # a search rung passed since the last step
                while pending_evals and metrics["samples"] >= pending_evals[0]:
                    pending_evals.pop(0)
                    due = True
                if due or trainer.step == cfg.max_steps or (cfg.eval_every and trainer.step % cfg.eval_every == 0):
                    metrics.update(trainer.evaluate())
            if harness:
                report(metrics, checkpoint=None if diverged else state)  # type: ignore[call-arg]
            elif checkpoint is not None and checkpoint_every and trainer.step % checkpoint_every == 0 and not diverged:
                checkpoint(metrics, state())
            elif report is not None:
                report(metrics)
            if diverged:
                log(f"diverged: {message}")
                break
    except BudgetSpent:  # the harness ended the run (budget spent, or stopped): hand back the summary
        pass

    ends = end_reason(last=metrics, max_samples=cfg.max_steps * cfg.images_per_step, returned=trainer.step >= cfg.max_steps)
    return {
        "end_reason": ends,
        "message": message,
        "steps": metrics.get("step", 0),
        "samples": metrics.get("samples", 0),
        "num_classes": data.num_classes,
        "task": data.task,
        "chance_ce": trainer.chance_ce,
        "best_ce_ema": best_ce_ema if math.isfinite(best_ce_ema) else None,
        "sdm_start_step": first_sdm_step(trainer),
        # the run's own head-LR changes (reid_core.head_lr): counts, and each with its step, evidence, LR before/after
        "head_guard_firings": sum(e.kind == GUARD for e in trainer.events),
        "head_lr_raises": sum(e.kind == RAISE for e in trainer.events),
        "head_lr_events": [e.to_dict() for e in trainer.events],
        "final": metrics,
        "wall_s": time.perf_counter() - started,
    }


def first_sdm_step(trainer: Trainer) -> Optional[int]:
    """The first optimizer step trained with SDM (the CE-only phase's end), or None if none was."""
    start, cfg = trainer.sdm_start_step, trainer.cfg
    if start is None or start >= trainer.step or cfg.sdm_weight <= 0 or not trainer.data.has_captions:
        return None
    return start + 1  # start is the 0-based index of that step; steps are reported 1-based


def load_cli_config(config: Optional[str], overrides: Sequence[str]) -> TrainConfig:
    """A `TrainConfig` from a file (or the defaults) with ``--set`` overrides on top."""
    base = TrainConfig.from_file(config) if config else TrainConfig()
    return base.with_overrides(overrides)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """``reid-tune train``: the plain run of our function (`reid_core.runner`, as ``reid-tune run``)."""
    return _run_main(argv, prog or "python -m reid_core.train")


if __name__ == "__main__":
    sys.exit(main())
