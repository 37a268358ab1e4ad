"""The plain run, no Ray: ``reid-tune train`` and ``reid-tune run`` are this one command.

    reid-tune train --config tune_results/NAME/best_config.json --out runs/best          # our function
    reid-tune run --trainable my_repo.tune:train --config defaults.yaml --set lr_head=1e-2  # yours

A training function (ours, `reid_core.train.train`, unless ``--trainable`` or the exported
``best_config.json`` names another) is called once under the contract (`reid_core.contract`); its
``report`` writes ``metrics.csv`` (our columns, then whatever else the function reports), prints a
progress line now and then, and applies the chance-level rule the search would apply to the same
curve (`reid_core.chance`), in the same unit: images, from the search's settings that
``best_config.json`` keeps, else ``--grace-steps`` x the function's images per optimizer step. At the
end ``summary.json`` holds why the run ended (`reid_core.ending`), the rule's verdict and, for a run
stuck at chance, its likely cause (`reid_core.diagnostics`). The harness seeds Python, NumPy and torch
with 0 before calling the function, in a search's trial as here, so a trial re-runs on its own curve
(``reid-tune report EXP --compare DIR``).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from reid_core.chance import DEFAULT_CHANCE_MARGIN, DEFAULT_GRACE_STEPS, EARLY, VERDICTS, WINDOW, ChanceLevelRule, go_line
from reid_core.config import TrainConfig
from reid_core.contract import BudgetSpent, Reporter, call
from reid_core.early import scope
from reid_core.dashboards import Dashboards, MlflowLog, WandbLog, add_mlflow_argument, add_wandb_argument, check_wandb, wandb_folder, wandb_note
from reid_core.diagnostics import DIAGNOSED_KEYS, Diagnosis, configured_lrs, diagnose
from reid_core.ending import end_reason
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser, add_config_arguments, add_shortcut_arguments, parse_args, shortcut_values
from reid_core.io import write_json_atomic
from reid_core.job import Job, job_for
from reid_core.pace import LoaderWatch
from reid_core.actions import stuck_message
from reid_core.repair import fix_args, fix_for
from reid_core.schema import COMPLETED, DIVERGED, METRIC_COLUMNS, STEP_METRICS, STUCK


class RunWriter:
    """The plain run's reports: a metrics.csv row per step, config.json, a progress line now and then, and the
    search's chance-level rule on the same curve (`reid_core.chance.ChanceLevelRule`), ``grace_samples``
    images long, with the Go line ``log(C) - chance_margin``.

    Nothing is written until the first step is reported: a config or data error leaves ``out`` untouched.
    ``config``: the function's config (config.json; a `TrainConfig` is written as its dict); ``max_steps``:
    the run's length where known (progress lines); ``dashboard``: also called with every step's metrics
    (``--mlflow``, ``--wandb``: `reid_core.dashboards`).
    """

    def __init__(
        self,
        config: Mapping[str, Any] | TrainConfig,
        out: Path,
        *,
        grace_samples: float,
        chance_margin: float = DEFAULT_CHANCE_MARGIN,
        max_steps: Optional[int] = None,
        log_every_s: float = 5.0,
        stream=None,
        dashboard: Optional[Callable[[dict[str, Any]], None]] = None,
        judge: Optional[Mapping[str, Any]] = None,
    ):
        """``judge``: the rule's keywords (verdict, budget_samples, calibrated, lr_fixed), as the search has them."""
        self.out, self.log_every_s, self.max_steps = out, log_every_s, max_steps
        self.stream = stream or sys.stdout  # read now: a captured or redirected stdout
        self.config = config.to_dict() if isinstance(config, TrainConfig) else dict(config)  # what config.json holds
        self.rule = ChanceLevelRule(grace_samples, chance_margin, **(judge or {}))
        self.verdict: Optional[str] = None  # the rule's first verdict: what the search would have ended the trial as
        self.verdict_step: Optional[int] = None
        self.dashboard = dashboard
        self.rows: list[dict[str, Any]] = []  # kept for the diagnosis of a run stuck at chance
        self.loader = LoaderWatch()  # says once when the steps wait for their images
        self._file = None
        self._writer: Optional[csv.DictWriter] = None
        self._started = time.perf_counter()
        self._last_log = -math.inf

    def __call__(self, metrics: dict[str, Any]) -> None:
        if self._writer is None:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "config.json", self.config)
            self._file = open(self.out / "metrics.csv", "w", newline="")
            # our columns, then whatever else a function reports at its first step
            columns = [*METRIC_COLUMNS, *(k for k in metrics if k not in METRIC_COLUMNS)]
            self._writer = csv.DictWriter(self._file, fieldnames=columns, restval="", extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerow(metrics)
        if self.dashboard is not None:
            self.dashboard(metrics)
        self.rows.append({k: metrics[k] for k in STEP_METRICS if k in metrics})
        slow_loader = self.loader(metrics)
        if slow_loader:
            print(slow_loader, file=self.stream, flush=True)
        verdict = self.rule(metrics) if self.verdict is None else None
        if verdict is not None:
            self.verdict, self.verdict_step = verdict, metrics["step"]
            if verdict == STUCK:
                self.say_stuck()
        now = time.perf_counter()
        if now - self._last_log >= self.log_every_s or metrics["step"] == self.max_steps:
            self._last_log = now
            self._file.flush()
            print(progress_line(metrics, self.max_steps, now - self._started), file=self.stream, flush=True)

    def diagnosis(self) -> Diagnosis:
        """The likely cause of the run being stuck (above the Go line), from the rows so far and the configured LRs."""
        return diagnose(self.rows, **configured_lrs(self.config, DIAGNOSED_KEYS), margin=self.rule.margin)

    def say_stuck(self) -> None:
        """The seed team's Go/No-Go look: above the Go line and not clearly falling, and the likely cause."""
        last, early = self.rows[-1], self.rule.early
        line = go_line(last["chance_ce"], self.rule.margin)
        how = early.when(self.rule.grace_samples) if early else (
            f"after the grace window below the Go line on its training images but not on held-out ones (unseen_ce "
            f"{last.get('unseen_ce', math.nan):.3f})" if last["ce_ema"] <= line else "not clearly falling after the grace window"
        )
        print(
            f"stuck at chance after {last['step']} steps (the search would stop this trial here): ce_ema "
            f"{last['ce_ema']:.3f}, Go line {line:.2f}; {how}; "
            f"likely cause: {self.diagnosis().block()}",
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


class PlainRun:
    """One call of the function with a `RunWriter` behind its report; the rule's unit read at the first report.

    ``grace_steps``/``max_steps`` (flags) count optimizer steps of the function as configured; without
    them the search's own budget in images (``search``: what best_config.json keeps) applies.
    """

    def __init__(self, config: dict[str, Any], out: Path, *, search: Mapping[str, Any], grace_steps: Optional[int],
                 max_steps: Optional[int], chance_margin: float, stop_when_stuck: bool, log_every_s: float,
                 dashboard: Optional[Callable[[dict[str, Any]], None]] = None, verdict: str = EARLY,
                 trainable: bool = False):  # fmt: skip
        self.config, self.out, self.search = config, out, search
        self.grace_steps, self.max_steps, self.chance_margin = grace_steps, max_steps, chance_margin
        self.stop_when_stuck, self.log_every_s, self.dashboard = stop_when_stuck, log_every_s, dashboard
        self.verdict, self.trainable = verdict, trainable  # the rule's verdict; a user's function (the early scope)
        self.writer: Optional[RunWriter] = None
        self.reporter = Reporter(self._forward, log=print)
        self.stopped: Optional[str] = None  # the verdict that ended the run here (diverged; stuck with --stop-when-stuck)

    def _forward(self, metrics: dict[str, Any], state: Any) -> None:
        if self.writer is None:  # the first report: now the images per step are known
            per_step = metrics["samples"] / max(metrics["step"], 1)
            grace = self.grace_steps * per_step if self.grace_steps else self.search.get("grace_samples", DEFAULT_GRACE_STEPS * per_step)
            budget = self.max_steps * per_step if self.max_steps else self.search.get("max_samples")
            self.reporter.max_samples = budget
            self.writer = RunWriter(
                self.config, self.out, grace_samples=grace, chance_margin=self.chance_margin, log_every_s=self.log_every_s,
                max_steps=math.ceil(budget / per_step) if budget else self.config.get("max_steps"), dashboard=self.dashboard,
                judge={"verdict": self.verdict, "budget_samples": budget, "scope": scope(self.config, self.trainable)},
            )  # fmt: skip
        self.writer(metrics)
        if self.writer.verdict == DIVERGED or (self.writer.verdict == STUCK and self.stop_when_stuck):
            self.stopped = self.writer.verdict
            raise BudgetSpent()  # nothing recovers a NaN loss; a stuck run ends where the search would end it

    def run(self, fn: Callable[..., Any], job: Job, threads: int) -> dict[str, Any]:
        started = time.perf_counter()
        returned = call(fn, self.config, self.reporter, threads)
        writer, last = self.writer, self.reporter.last
        stuck = writer.verdict == STUCK
        found = writer.diagnosis() if stuck else None
        per_step = last["samples"] / max(last["step"], 1)
        fix = fix_for(found.cause, writer.rows, self.config, writer.rule.grace_samples / per_step) if found else None
        ce_emas = [r["ce_ema"] for r in writer.rows if math.isfinite(r["ce_ema"])]
        summary = {
            **returned,  # what the function returned, under the harness's keys
            **job.exported(),
            "end_reason": end_reason(verdict=self.stopped, last=last, max_samples=self.reporter.max_samples, returned=True),
            "steps": last["step"],
            "samples": last["samples"],
            "chance_ce": last["chance_ce"],
            "best_ce_ema": min(ce_emas) if ce_emas else None,
            "final": last,
            "wall_s": time.perf_counter() - started,
            "chance_verdict": STUCK if stuck else None,
            "chance_verdict_step": writer.verdict_step if stuck else None,
            "stuck_cause": found.cause if found else None,
            "stuck_evidence": found.evidence if found else None,
            "stuck_fix": found.fix if found else None,
            "fix": fix.changes if fix else None,  # the config change that applies the fix (reid_core.repair), sized from the run
            "fix_why": fix.why if fix else None,
            # how the rule decided: early (reid_core.early: the verdict's line) or at the grace window
            "chance_verdict_basis": (EARLY if writer.rule.early else WINDOW) if stuck else None,
            "early_verdict": writer.rule.early.line(writer.rule.grace_samples) if stuck and writer.rule.early else None,
        }
        write_json_atomic(self.out / "summary.json", summary)
        return summary

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build_parser(prog: str = "python -m reid_core.runner") -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--trainable", metavar="PACKAGE.MODULE:FUNCTION", help="the training function (default: the one --config names, else ours)")
    add_config_arguments(p)
    add_shortcut_arguments(p)
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<command>-TIMESTAMP)")
    p.add_argument("--max-steps", type=int, help="end after this many optimizer steps (default: the search's budget, else the function's own end)")
    p.add_argument("--grace-steps", type=int, help=f"the chance-level rule's grace window in optimizer steps (default: the search's, else {DEFAULT_GRACE_STEPS})")
    p.add_argument("--chance-margin", type=float, help=f"Go line = log(C) - margin (default: the search's, else the config's chance_margin, else {DEFAULT_CHANCE_MARGIN})")
    p.add_argument("--verdict", choices=VERDICTS, help="early: the chance-level rule may stop a run before the grace window "
                   "on confident evidence (reid_core.early); window: the seed's Go/No-Go at the window only (default: the search's, else early)")
    p.add_argument("--threads", type=int, help="torch threads (default: the search trial's, else the config's, else 1)")
    p.add_argument("--log-every", type=float, default=5.0, metavar="SECONDS", help="progress line interval")
    p.add_argument("--preflight", action="store_true", help="run the search's pre-flight checks first")
    p.add_argument(
        "--stop-when-stuck",
        action="store_true",
        help="end the run where the search would stop it as stuck_at_chance (the seed's 'No-Go: stop first'); exit 1",
    )
    add_mlflow_argument(p, "also log every step's metrics to an MLflow run")
    add_wandb_argument(p, "every step's metrics as one run (its files under --out)")
    return p


def _exported(path: Optional[str]) -> dict[str, Any]:
    """The provenance keys of an exported best_config.json (the function, the search's budget), or nothing."""
    try:
        values = json.loads(Path(path).read_text()) if path and path.endswith(".json") else {}
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) and isinstance(values.get("config"), dict) else {}


def _check_flags(args) -> None:
    for flag in ("max_steps", "grace_steps", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} is {getattr(args, flag)}, but must be >= 1")
    if args.chance_margin is not None and not args.chance_margin > 0:
        raise UserError(f"--chance-margin is {args.chance_margin}, but must be > 0")


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv, prog)
    try:
        _check_flags(args)
        exported = _exported(args.config)
        search = exported.get("search", {})
        job = job_for(args.trainable or exported.get("trainable"))
        fn = job.function()
        config = job.read_config(args.config, list(args.overrides), shortcut_values(args))
        margin = args.chance_margin or search.get("chance_margin") or config.get("chance_margin") or DEFAULT_CHANCE_MARGIN
        config = job.with_harness(config, chance_margin=margin, threads=args.threads)
        command = parser.prog.split()[-1].rsplit(".", 1)[-1]  # train, run
        out = Path(args.out or f"runs/{command}-{datetime.now():%Y%m%d-%H%M%S}")
        if (out / "metrics.csv").exists():
            raise UserError(f"'{out}' already holds a run (metrics.csv); pass a new --out folder")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out '{out}' is a file; pass a folder")
        wandb_mode = check_wandb(args.wandb) if args.wandb else None
        threads = int(args.threads or search.get("threads") or config.get("threads") or 1)
        if args.preflight:
            job.preflight(config, threads=threads, log=print)
        if wandb_mode:
            print(wandb_note(wandb_mode, args.wandb, wandb_folder(out)))
        dashboard = Dashboards(
            MlflowLog(args.mlflow, "reid-tune-train", out.name, config) if args.mlflow else None,
            WandbLog(args.wandb, "reid-tune-train", out.name, config, wandb_folder(out), wandb_mode)
            if wandb_mode not in (None, "disabled")
            else None,
        )
        runner = PlainRun(
            config, out, search=search, grace_steps=args.grace_steps, max_steps=args.max_steps, chance_margin=margin,
            stop_when_stuck=args.stop_when_stuck, log_every_s=args.log_every, dashboard=dashboard,
            verdict=args.verdict or search.get("verdict", EARLY), trainable=bool(job.exported()),
        )  # fmt: skip
        summary = None
        try:
            summary = runner.run(fn, job, threads)
        finally:
            runner.close()
            dashboard.close(failed=summary is None or summary["end_reason"] != COMPLETED)
    except UserError as err:
        return cli_exit(err, parser.prog)
    final = summary["final"]
    print(
        f"{summary['end_reason']} after {summary['steps']} steps ({summary['samples']} images): "
        f"ce_ema {final.get('ce_ema', math.nan):.3f} vs chance {summary['chance_ce']:.3f}"
        + (f", {summary['task']} R@1 {final['val_r1']:.1f}" if "val_r1" in final and "task" in summary else "")
        + (f"; {STUCK} since step {summary['chance_verdict_step']} ({summary['stuck_cause']})" if summary["chance_verdict"] else "")
    )
    print(f"wrote {out}/metrics.csv, {out}/summary.json, {out}/config.json")
    if summary["chance_verdict"]:  # the one line a search prints when it stops on this cause, and the re-run that applies the fix
        fix = summary["fix"]
        trainable = f"--trainable {job.exported()['trainable']} " if job.exported().get("trainable") else ""
        flags = "".join(f"--{f.replace('_', '-')} {getattr(args, f)} " for f in ("max_steps", "grace_steps") if getattr(args, f))
        rerun = f"reid-tune {command} {trainable}--config {out}/config.json {flags}--set {fix_args(fix)}" if fix else None
        print(stuck_message(summary["stuck_cause"], summary["stuck_evidence"], summary["stuck_fix"], summary["chance_verdict_step"], rerun))
    return 0 if summary["end_reason"] == COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
