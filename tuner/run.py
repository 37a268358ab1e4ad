"""Re-run a user's training function plainly, no Ray: the winner of a ``--trainable`` search, or any config.

    reid-tune run --trainable my_repo.tune:train --config tune_results/NAME/best_config.json --out runs/best
    python -m tuner.run --trainable my_repo.tune:train --config defaults.yaml --set lr_head=1e-2 --max-steps 300

Writes what ``reid-tune train`` writes (`reid_core.train.RunWriter`): ``metrics.csv``, ``config.json``,
``summary.json`` with the chance-level verdict the search would reach on the same curve and the
stuck diagnosis. The exported best_config.json names the function and the trial's budget, threads
and grace window, so the re-run stops where the trial stopped and trains on the same curve
(``reid-tune report EXP --compare DIR``). The harness seeds Python, NumPy and torch with 0 before
calling the function, in a trial as here.
"""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

from reid_core.chance import DEFAULT_CHANCE_MARGIN, DEFAULT_GRACE_STEPS
from reid_core.contract import BudgetSpent, Reporter, call, load_trainable
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser, parse_args
from reid_core.io import write_json_atomic
from reid_core.schema import COMPLETED, DIVERGED, STUCK
from reid_core.train import RunWriter
from tuner.byo import read_user_config

PROG = "python -m tuner.run"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--trainable", metavar="PACKAGE.MODULE:FUNCTION", help="the function (default: the one best_config.json names)")
    p.add_argument("--config", metavar="FILE", required=True, help="your config (YAML/JSON mapping) or an exported best_config.json")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="override keys of it")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/run-TIMESTAMP)")
    p.add_argument("--max-steps", type=int, help="end after this many optimizer steps (default: the search's budget, else the function's own end)")
    p.add_argument("--grace-steps", type=int, help=f"the chance-level rule's grace window in steps (default: the search's, else {DEFAULT_GRACE_STEPS})")
    p.add_argument("--chance-margin", type=float, help=f"Go line = log(C) - margin (default: the search's, else {DEFAULT_CHANCE_MARGIN})")
    p.add_argument("--threads", type=int, help="torch threads (default: the search trial's, else 1)")
    p.add_argument("--log-every", type=float, default=5.0, metavar="SECONDS", help="progress line interval")
    return p


def _exported(path: str) -> dict[str, Any]:
    """The provenance keys of an exported best_config.json (trainable, search budget), or nothing."""
    try:
        values = json.loads(Path(path).read_text()) if path.endswith(".json") else {}
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) and isinstance(values.get("config"), dict) else {}


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv, prog)
    try:
        for flag in ("max_steps", "grace_steps", "threads"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')} is {getattr(args, flag)}, but must be >= 1")
        if args.chance_margin is not None and not args.chance_margin > 0:
            raise UserError(f"--chance-margin is {args.chance_margin}, but must be > 0")
        exported = _exported(args.config)
        spec = args.trainable or exported.get("trainable")
        if not spec:
            raise UserError("--trainable is missing (and --config names none); pass --trainable package.module:function")
        fn = load_trainable(spec)
        config = read_user_config(args.config, list(args.overrides))
        out = Path(args.out or f"runs/run-{datetime.now():%Y%m%d-%H%M%S}")
        if (out / "metrics.csv").exists():
            raise UserError(f"'{out}' already holds a run (metrics.csv); pass a new --out folder")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out '{out}' is a file; pass a folder")
        search = exported.get("search", {})
        runner = PlainRun(args, config, out, search)
        try:
            summary = runner.run(fn, spec, int(args.threads or search.get("threads") or 1))
        finally:
            runner.close()
    except UserError as err:
        return cli_exit(err, parser.prog)
    writer = runner.writer
    print(
        f"{summary['end_reason']} after {summary['steps']} steps ({summary['samples']} images): "
        f"ce_ema {summary['final'].get('ce_ema', math.nan):.3f} vs chance {summary['chance_ce']:.3f}"
        + (f"; {STUCK} since step {writer.verdict_step} ({summary['stuck_cause']})" if writer.verdict == STUCK else "")
    )
    print(f"wrote {out}/metrics.csv, {out}/summary.json, {out}/config.json")
    return 0 if summary["end_reason"] == COMPLETED else 1


class PlainRun:
    """One call of the function with a `RunWriter` behind its report; the budget read at the first report."""

    def __init__(self, args, config: dict[str, Any], out: Path, search: dict[str, Any]):
        self.args, self.config, self.out, self.search = args, config, out, search
        self.writer: Optional[RunWriter] = None
        self.reporter: Optional[Reporter] = None
        self.diverged = False

    def _forward(self, metrics: dict[str, Any], state: Any) -> None:
        if self.writer is None:  # the first report: now the images per step are known
            per_step = metrics["samples"] / max(metrics["step"], 1)
            args, search = self.args, self.search
            grace = args.grace_steps * per_step if args.grace_steps else search.get("grace_samples", DEFAULT_GRACE_STEPS * per_step)
            margin = args.chance_margin or search.get("chance_margin", DEFAULT_CHANCE_MARGIN)
            max_samples = args.max_steps * per_step if args.max_steps else search.get("max_samples")
            self.reporter.max_samples = max_samples
            max_steps = math.ceil(max_samples / per_step) if max_samples else None
            self.writer = RunWriter(
                self.config, self.out, args.log_every, grace_samples=grace, chance_margin=margin, max_steps=max_steps
            )
        self.writer(metrics)
        if not (math.isfinite(metrics["ce"]) and math.isfinite(metrics["ce_ema"])):
            self.diverged = True
            raise BudgetSpent()  # as reid_core.train: nothing recovers a NaN loss

    def run(self, fn, spec: str, threads: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.reporter = Reporter(self._forward)
        returned = call(fn, self.config, self.reporter, threads)
        writer, last = self.writer, self.reporter.last
        found = writer.diagnosis() if writer.verdict == STUCK else None
        ce_emas = [r["ce_ema"] for r in writer.rows if math.isfinite(r["ce_ema"])]
        summary = {
            **returned,  # what the function returned, under the harness's keys
            "trainable": spec,
            "end_reason": DIVERGED if self.diverged else COMPLETED,
            "steps": last["step"],
            "samples": last["samples"],
            "chance_ce": last["chance_ce"],
            "best_ce_ema": min(ce_emas) if ce_emas else None,
            "final": last,
            "wall_s": time.perf_counter() - started,
            "chance_verdict": writer.verdict if writer.verdict == STUCK else None,
            "chance_verdict_step": writer.verdict_step if writer.verdict == STUCK else None,
            "stuck_cause": (found.cause if found else "unknown") if writer.verdict == STUCK else None,
        }
        write_json_atomic(self.out / "summary.json", summary)
        return summary

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


if __name__ == "__main__":
    sys.exit(main())
