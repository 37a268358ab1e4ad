"""The training job: ``train(cfg, report)`` and its plain command line.

One function serves both the Ray Tune search (``report`` forwards to
``ray.tune.report``) and the plain re-run (``report`` is a `RunWriter`: metrics.csv,
progress lines, and the chance-level verdict the search would reach on the same curve).
It never imports ray. The step itself is `reid_core.trainer.Trainer`.

    python -m reid_core.train --config best_config.json --out runs/rerun
"""

from __future__ import annotations

import csv
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from reid_core.chance import DEFAULT_CHANCE_MARGIN, DEFAULT_GRACE_STEPS, ChanceLevelRule, go_line
from reid_core.config import TrainConfig
from reid_core.dashboards import (
    Dashboards,
    MlflowLog,
    WandbLog,
    add_mlflow_argument,
    add_wandb_argument,
    check_wandb,
    wandb_folder,
    wandb_note,
)
from reid_core.diagnostics import DIAGNOSED_KEYS, Diagnosis, configured_lrs, diagnose
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser, add_config_arguments, add_shortcut_arguments, parse_args, shortcut_values
from reid_core.head_lr import GUARD, RAISE
from reid_core.io import write_json_atomic
from reid_core.preflight import preflight
from reid_core.schema import COMPLETED, DIVERGED, METRIC_COLUMNS, STEP_METRICS, STUCK
from reid_core.shipped_weights import effective_pretrained
from reid_core.trainer import Trainer

Report = Callable[[dict[str, Any]], None]


def train(
    cfg: TrainConfig | Mapping[str, Any],
    report: Optional[Report] = None,
    *,
    log: Callable[[str], None] = lambda s: None,
    eval_at_samples: Sequence[int] = (),
    resume: Optional[dict[str, Any]] = None,
    checkpoint: Optional[Callable[[dict[str, Any], dict[str, Any]], None]] = None,
    checkpoint_every: int = 0,
    checkpoint_at: Optional[Callable[[int], bool]] = None,
) -> dict:
    """Train ``cfg`` and return a summary; ``report(metrics)`` is called once per optimizer step.

    Retrieval is evaluated every ``cfg.eval_every`` steps, at the end, and at the first step
    whose ``samples`` reach each of ``eval_at_samples`` (the search passes its ASHA rungs, so
    a rung that ranks trials by ``val_r1`` reads a fresh value). Evaluating changes nothing
    in training: the curve is the same with or without it.

    Every ``checkpoint_every`` steps ``checkpoint(metrics, trainer_state)`` is called instead of
    ``report(metrics)`` (one call per step either way), and at every step ``checkpoint_at(step)`` is true
    for (a PBT trial's perturbation points); ``resume`` (such a state) continues
    that run where it stopped, on the same curve.

    Ends with ``end_reason`` ``completed`` (all ``max_steps`` done), ``diverged``
    (the loss became NaN/inf; the last report carries it), or whatever ``report.stop_reason`` says
    once it is set (a `RunWriter` with ``stop_when_stuck``: ``stuck_at_chance``). Raises `UserError`
    for bad data or config before the first step, so nothing is reported then.

    The reference implementation of the training-function contract (`reid_core.contract`):
    ``train(config_dict, report)`` works as ``reid-tune search --trainable reid_core.train:train``
    would call it, with the contract's checkpoint hooks (``report.resume``, ``report.checkpoint_every``).
    """
    started = time.perf_counter()
    if not isinstance(cfg, TrainConfig):  # the contract's config: a plain mapping of TrainConfig fields
        cfg = TrainConfig.from_dict(cfg)
    if resume is None:
        resume = getattr(report, "resume", None)
    if checkpoint is None and getattr(report, "checkpoint_every", 0):
        checkpoint_every = report.checkpoint_every  # type: ignore[union-attr]
        checkpoint = lambda metrics, state: report(metrics, checkpoint=state)  # type: ignore[misc]  # noqa: E731
    trainer = Trainer(cfg)
    if resume is not None:
        trainer.load_state_dict(resume)
    data = trainer.data
    log(
        f"training {cfg.model} ({effective_pretrained(cfg.model, cfg.pretrained) or 'random init'}) on {data.name}: {len(data.labels)} images, {data.num_classes} identities "
        f"(chance CE {trainer.chance_ce:.3f}), {cfg.max_steps} steps of {cfg.images_per_step} images "
        f"on {trainer.device}; {data.task} evaluation on {len(data.gallery)} {cfg.eval_split} images"
    )
    for note in data.notes:
        log(note)
    pending_evals = sorted(s for s in eval_at_samples if s > trainer.step * cfg.images_per_step)
    best_ce_ema = math.inf if resume is None else resume.get("best_ce_ema", math.inf)
    metrics: dict[str, Any] = {}
    end_reason, message = COMPLETED, ""
    logged = len(trainer.events)  # a resumed run's earlier head-LR changes were said before
    while trainer.step < cfg.max_steps:
        metrics = trainer.train_step()
        for event in trainer.events[logged:]:  # the guard fired, or the schedule raised the head LR
            log(event.line())
        logged = len(trainer.events)
        diverged = not math.isfinite(metrics["loss"])
        if diverged:
            end_reason = DIVERGED
            message = (
                f"loss became {metrics['loss']} at step {metrics['step']}; "
                "lower head_lr or backbone_lr, or set grad_clip"
            )
        else:
            best_ce_ema = min(best_ce_ema, metrics["ce_ema"])
            due = False  # a search rung passed since the last step
            while pending_evals and metrics["samples"] >= pending_evals[0]:
                pending_evals.pop(0)
                due = True
            if due or trainer.step == cfg.max_steps or (cfg.eval_every and trainer.step % cfg.eval_every == 0):
                metrics.update(trainer.evaluate())
        keep = (checkpoint_every and trainer.step % checkpoint_every == 0) or (checkpoint_at and checkpoint_at(trainer.step))
        if checkpoint is not None and keep and not diverged:
            checkpoint(metrics, {**trainer.state_dict(), "best_ce_ema": best_ce_ema})
        elif report is not None:
            report(metrics)
        if diverged:
            log(f"diverged: {message}")
            break
        if getattr(report, "stop_reason", None):  # the report's own verdict, e.g. the plain job's --stop-when-stuck
            end_reason, message = report.stop_reason, f"stopped at step {metrics['step']}"  # type: ignore[union-attr]
            break

    return {
        "end_reason": end_reason,
        "message": message,
        "steps": metrics.get("step", 0),
        "samples": metrics.get("samples", 0),
        "num_classes": data.num_classes,
        "task": data.task,
        "chance_ce": trainer.chance_ce,
        "best_ce_ema": best_ce_ema if math.isfinite(best_ce_ema) else None,
        "sdm_start_step": first_sdm_step(trainer),
        # the run's own head-LR changes (reid_core.head_lr): counts, and each with its step, evidence, LR before/after
        "head_guard_firings": trainer.head_lr_changes.count(GUARD),
        "head_lr_raises": trainer.head_lr_changes.count(RAISE),
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


# --- plain command line --------------------------------------------------------------


class RunWriter:
    """The plain job's ``report``: metrics.csv row per step, config.json, a progress line now and then,
    and the search's chance-level rule on the same curve (`reid_core.chance.ChanceLevelRule`).

    Nothing is written until the first step is reported: a config or data error
    leaves ``--out`` untouched.
    """

    def __init__(
        self,
        cfg: TrainConfig | Mapping[str, Any],
        out: Path,
        log_every_s: float = 5.0,
        stream=None,
        grace_steps: int = DEFAULT_GRACE_STEPS,
        chance_margin: float = DEFAULT_CHANCE_MARGIN,
        *,
        grace_samples: Optional[float] = None,
        max_steps: Optional[int] = None,
        stop_when_stuck: bool = False,
        dashboard: Optional[Callable[[dict[str, Any]], None]] = None,
    ):
        """``cfg``: a `TrainConfig`, or a user's own config mapping (``reid-tune run``), which then
        gives ``grace_samples`` (images) and, if it knows it, ``max_steps``; ``dashboard``: also
        called with every step's metrics (``--mlflow``, ``--wandb``: `reid_core.dashboards`)."""
        own = isinstance(cfg, TrainConfig)
        self.cfg, self.out, self.log_every_s = cfg, out, log_every_s
        self.stream = stream or sys.stdout  # read now: a captured or redirected stdout
        self.config = cfg.to_dict() if own else dict(cfg)  # what config.json holds
        self.max_steps = cfg.max_steps if own else max_steps
        self.chance_margin = chance_margin
        # grace in images, as the search counts it: grace_steps at accumulation 1
        self.rule = ChanceLevelRule(grace_steps * cfg.batch_size if own else grace_samples, chance_margin)
        self.verdict: Optional[str] = None  # the rule's first verdict: what the search would have ended the trial as
        self.verdict_step: Optional[int] = None
        self.stop_when_stuck = stop_when_stuck
        self.dashboard = dashboard
        self.stop_reason: Optional[str] = None  # set to stuck_at_chance at the verdict with stop_when_stuck: train() ends there
        self.rows: list[dict[str, Any]] = []  # kept for the diagnosis of a run stuck at chance
        self._file = None
        self._writer: Optional[csv.DictWriter] = None
        self._started = time.perf_counter()
        self._last_log = -math.inf

    def __call__(self, metrics: dict[str, Any]) -> None:
        if self._writer is None:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "config.json", self.config)
            self._file = open(self.out / "metrics.csv", "w", newline="")
            # our columns, then whatever else a user's function reports at its first step
            columns = [*METRIC_COLUMNS, *(k for k in metrics if k not in METRIC_COLUMNS)]
            self._writer = csv.DictWriter(self._file, fieldnames=columns, restval="", extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerow(metrics)
        if self.dashboard is not None:
            self.dashboard(metrics)
        self.rows.append({k: metrics[k] for k in STEP_METRICS if k in metrics})
        verdict = self.rule(metrics) if self.verdict is None else None
        if verdict is not None:
            self.verdict, self.verdict_step = verdict, metrics["step"]
            if verdict == STUCK:
                self.say_stuck()
                self.stop_reason = STUCK if self.stop_when_stuck else None
        now = time.perf_counter()
        if now - self._last_log >= self.log_every_s or metrics["step"] == self.max_steps:
            self._last_log = now
            self._file.flush()
            print(progress_line(metrics, self.max_steps, now - self._started), file=self.stream, flush=True)

    def diagnosis(self) -> Optional[Diagnosis]:
        """The likely cause of the run being stuck, from the rows so far and the configured LRs."""
        return diagnose(self.rows, **configured_lrs(self.config, DIAGNOSED_KEYS), margin=self.rule.margin)

    def say_stuck(self) -> None:
        """The seed team's Go/No-Go look: above the Go line and not clearly falling, and the likely cause."""
        last = self.rows[-1]
        found = self.diagnosis()
        print(
            f"stuck at chance after {last['step']} steps (the search would stop this trial here): ce_ema "
            f"{last['ce_ema']:.3f}, Go line {go_line(last['chance_ce'], self.chance_margin):.2f}, not clearly falling; "
            f"likely cause: {found.block() if found else 'unknown'}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def progress_line(m: dict[str, Any], max_steps: Optional[int], elapsed: float) -> str:
    """One progress line; a user's function may report no LR or throughput, and know no step budget."""
    line = f"step {m['step']:>5}" + (f"/{max_steps}" if max_steps else "")
    line += f"  ce {m['ce']:.3f}  ce_ema {m['ce_ema']:.3f} (chance {m['chance_ce']:.2f})"
    if "head_lr_applied" in m:
        line += f"  head_lr_applied {m['head_lr_applied']:.2e}"
    if "images_per_s" in m:
        line += f"  {m['images_per_s']:.0f} img/s"
    if max_steps:
        line += f"  eta {elapsed / m['step'] * (max_steps - m['step']):.0f}s"
    return line


def load_cli_config(config: Optional[str], overrides: Sequence[str]) -> TrainConfig:
    base = TrainConfig.from_file(config) if config else TrainConfig()
    return base.with_overrides(overrides)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m reid_core.train", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    add_shortcut_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/train-TIMESTAMP)")
    parser.add_argument("--log-every", type=float, default=5.0, metavar="SECONDS", help="progress line interval")
    parser.add_argument("--preflight", action="store_true", help="run the search's pre-flight checks first")
    parser.add_argument(
        "--stop-when-stuck",
        action="store_true",
        help="end the run where the search would stop it as stuck_at_chance (the seed's 'No-Go: stop first'); exit 1",
    )
    add_mlflow_argument(parser, "also log every step's metrics to an MLflow run")
    add_wandb_argument(parser, "every step's metrics as one run (its files under --out)")
    parser.add_argument(
        "--grace-steps",
        type=int,
        default=DEFAULT_GRACE_STEPS,
        help="the chance-level rule's grace window, steps at accumulation 1, as in the search "
        f"(default {DEFAULT_GRACE_STEPS})",
    )
    parser.add_argument(
        "--chance-margin",
        type=float,
        default=DEFAULT_CHANCE_MARGIN,
        help=f"Go line = log(C) - margin, as in the search (default {DEFAULT_CHANCE_MARGIN})",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv, prog)
    try:
        if args.grace_steps < 1 or not args.chance_margin > 0:
            raise UserError(
                f"--grace-steps is {args.grace_steps} and --chance-margin {args.chance_margin}, but must be >= 1 and > 0"
            )
        cfg = TrainConfig.from_dict(shortcut_values(args), base=load_cli_config(args.config, args.overrides))
        out = Path(args.out or f"runs/train-{datetime.now():%Y%m%d-%H%M%S}")
        if (out / "metrics.csv").exists():
            raise UserError(f"'{out}' already holds a run (metrics.csv); pass a new --out folder")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out '{out}' is a file; pass a folder")
        wandb_mode = check_wandb(args.wandb) if args.wandb else None
        if args.preflight:
            preflight(cfg, log=print)
        if wandb_mode:
            print(wandb_note(wandb_mode, args.wandb, wandb_folder(out)))
        dashboard = Dashboards(
            MlflowLog(args.mlflow, "reid-tune-train", out.name, cfg.to_dict()) if args.mlflow else None,
            WandbLog(args.wandb, "reid-tune-train", out.name, cfg.to_dict(), wandb_folder(out), wandb_mode)
            if wandb_mode not in (None, "disabled")
            else None,
        )
        writer = RunWriter(
            cfg,
            out,
            args.log_every,
            grace_steps=args.grace_steps,
            chance_margin=args.chance_margin,
            stop_when_stuck=args.stop_when_stuck,
            dashboard=dashboard,
        )
        summary = None
        try:
            summary = train(cfg, writer, log=print)
        finally:
            writer.close()
            dashboard.close(failed=summary is None or summary["end_reason"] != COMPLETED)
    except UserError as err:
        return cli_exit(err, parser.prog)
    summary["chance_verdict"] = writer.verdict if writer.verdict == STUCK else None
    summary["chance_verdict_step"] = writer.verdict_step if writer.verdict == STUCK else None
    found = writer.diagnosis() if writer.verdict == STUCK else None
    summary["stuck_cause"] = found.cause if found else None
    write_json_atomic(out / "summary.json", summary)
    final = summary["final"]
    print(
        f"{summary['end_reason']} after {summary['steps']} steps ({summary['samples']} images): "
        f"ce_ema {final.get('ce_ema', float('nan')):.3f} vs chance {summary['chance_ce']:.3f}"
        + (f", {summary['task']} R@1 {final['val_r1']:.1f}" if "val_r1" in final else "")
        + (f"; {STUCK} since step {writer.verdict_step} ({summary['stuck_cause'] or 'unknown'})" if writer.verdict == STUCK else "")
    )
    print(f"wrote {out}/metrics.csv, {out}/summary.json, {out}/config.json")
    return 0 if summary["end_reason"] == COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
