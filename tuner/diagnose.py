"""``reid-tune diagnose RUN``: the verdict a search would have given a run that already happened.

    reid-tune diagnose runs/train-20261203-101500                 # a plain job's folder (metrics.csv, config.json)
    reid-tune diagnose tune_results/NAME/train_ab12cd34_3_...      # a trial's folder (its search's settings apply)
    reid-tune diagnose my_log.jsonl --grace-steps 300 --max-steps 450   # a metrics.csv or JSON-lines log of your loop

The run's rows are replayed through the search's own rule (`reid_core.chance.replay`: the early verdict, then
the grace window) and, where it stops, `reid_core.diagnostics.diagnose` names the cause from the rows up to
that step, as the search prints it. A log needs the contract's keys (``step``, ``samples``, ``ce``,
``ce_ema``, ``chance_ce``; `reid_core.monitor.HeadMonitor`'s keys for a cause). No Ray, no torch.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from reid_core.chance import DEFAULT_CHANCE_MARGIN, DEFAULT_GRACE_STEPS, EARLY, VERDICTS, replay
from reid_core.diagnostics import DIAGNOSED_KEYS, configured_lrs, diagnose
from reid_core.early import scope
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser
from reid_core.levels import go_line
from reid_core.schema import DIVERGED, STUCK
from tuner.ray_files import curve_of

NEEDED = ("step", "samples", "ce", "ce_ema", "chance_ce")  # the contract's keys the rule reads


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The per-step rows of a metrics.csv or a JSON-lines log (Ray's result.json is one), oldest first."""
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = [{k: _number(v) for k, v in r.items() if k and v not in ("", None)} for r in csv.DictReader(f)]
        else:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read '{path}' ({type(err).__name__}); pass a metrics.csv or a JSON-lines log") from None
    except json.JSONDecodeError as err:
        raise UserError(f"'{path}' is not JSON lines (line {err.lineno}); pass a metrics.csv or a JSON-lines log") from None
    rows = [r for r in rows if isinstance(r, dict) and "step" in r]
    if not rows:
        raise UserError(f"'{path}' holds no rows with a 'step'; pass a log of the contract's keys ({', '.join(NEEDED)})")
    missing = [k for k in NEEDED if k not in rows[0]]
    if missing:
        raise UserError(f"'{path}' lacks {', '.join(missing)} in its rows; report the contract's keys ({', '.join(NEEDED)})")
    return curve_of(rows)  # a restore's repeated reports replace the ones they undo, as the tables read them


class Source:
    """What the run's folder or file says: its rows, config, and the search's settings where it was a trial."""

    def __init__(self, path: Path):
        self.path, self.config, self.settings, self.trainable = path, None, None, True
        if path.is_dir():
            log = next((path / n for n in ("result.json", "metrics.csv") if (path / n).is_file()), None)
            if log is None:
                raise UserError(f"'{path}' holds neither metrics.csv (a plain run) nor result.json (a trial); pass a run folder or a log")
            self.rows = read_rows(log)
            if log.name == "result.json":
                self._trial(path)
            else:
                self._plain(path)
        elif path.is_file():
            self.rows = read_rows(path)
        else:
            raise UserError(f"'{path}' does not exist; pass a run folder, a trial folder, a metrics.csv or a JSON-lines log")

    def _plain(self, path: Path) -> None:
        self.config = _json(path / "config.json") or None
        summary = _json(path / "summary.json")
        self.trainable = bool(summary.get("trainable")) if summary else self.config is None

    def _trial(self, path: Path) -> None:
        from tuner.settings import SETTINGS_FILE, SearchSettings
        from tuner.storage import location

        sampled = _json(path / "params.json")
        if (path.parent / SETTINGS_FILE).is_file():
            self.settings = SearchSettings.load(location(str(path.parent)))
            self.config = self.settings.trial_config(sampled)
            self.trainable = self.settings.trainable is not None
        else:
            self.config = sampled


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def judge(source: Source, grace_steps: Optional[int], max_steps: Optional[int], margin: Optional[float], verdict: Optional[str]) -> list[str]:
    """The lines ``reid-tune diagnose`` prints: the verdict, its step and basis, the cause and evidence, the terms."""
    rows, config, settings = source.rows, source.config or {}, source.settings
    per_step = rows[-1]["samples"] / max(rows[-1]["step"], 1)
    if settings is not None and grace_steps is None and max_steps is None and margin is None:
        grace, margin = settings.grace_samples, settings.chance_margin
        keywords = settings.rule_keywords(config)
        keywords["verdict"] = verdict or keywords["verdict"]
    else:
        margin = margin or config.get("chance_margin") or DEFAULT_CHANCE_MARGIN
        grace = (grace_steps or DEFAULT_GRACE_STEPS) * per_step
        steps = max_steps or config.get("max_steps")
        budget = steps * per_step if isinstance(steps, (int, float)) else None
        keywords = {"verdict": verdict or EARLY, "budget_samples": budget, "scope": scope(config or None, source.trainable)}
    said, at, early = replay(rows, grace, margin, **keywords)
    budget = keywords.get("budget_samples")
    terms = (
        f"judged as the search judges: grace window {grace:,.0f} images ({grace / per_step:.0f} steps), Go line "
        f"{go_line(rows[-1]['chance_ce'], margin):.2f}, budget "
        + (f"{budget:,.0f} images" if budget else "unknown (pass --max-steps)")
        + f", {keywords['verdict']} verdict"
        + (" (the early verdict's thresholds were calibrated on reid-tiny runs; this run is judged early only on exact "
           "wiring evidence)" if keywords["verdict"] == EARLY and not keywords["scope"].calibrated else "")
    )  # fmt: skip
    if said is None:
        last = rows[-1]
        return [f"{source.path}: no verdict: the rule would not have stopped this run (ce_ema {last['ce_ema']:.3f} at step "
                f"{last['step']:.0f})", terms]  # fmt: skip
    if said == DIVERGED:
        return [f"{source.path}: {DIVERGED} at step {at['step']:.0f}: the loss became NaN/inf", terms]
    upto = [r for r in rows if r["samples"] <= at["samples"]]
    found = diagnose(upto, **configured_lrs(config, DIAGNOSED_KEYS), margin=margin)
    how = early.when(grace) if early else f"at the grace window ({at['samples'] / grace:.2f} of it): " + (
        "below the Go line on the images it trains on, at chance on held-out ones (memorising)"
        if at["ce_ema"] <= go_line(at["chance_ce"], margin)
        else "above the Go line, not clearly falling"
    )
    return [f"{source.path}: {STUCK} at step {at['step']:.0f}; {how}", f"cause: {found.block()}", terms]


def build_parser(prog: str = "python -m tuner.diagnose") -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("run", metavar="RUN", help="a plain run's folder, a trial's folder, a metrics.csv, or a JSON-lines log")
    p.add_argument("--grace-steps", type=int, help=f"the grace window in optimizer steps (default: the trial's search's, else {DEFAULT_GRACE_STEPS})")
    p.add_argument("--max-steps", type=int, help="the run's budget in optimizer steps (default: the search's, else the config's max_steps)")
    p.add_argument("--chance-margin", type=float, help=f"Go line = log(C) - margin (default: the search's, else {DEFAULT_CHANCE_MARGIN})")
    p.add_argument("--verdict", choices=VERDICTS, help="early (default) or window: the seed's Go/No-Go at the window only")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    p = build_parser(prog or "python -m tuner.diagnose")
    args = p.parse_args(argv)
    try:
        for flag in ("grace_steps", "max_steps", "chance_margin"):
            value = getattr(args, flag)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"--{flag.replace('_', '-')} is {value}, but must be > 0")
        lines = judge(Source(Path(args.run)), args.grace_steps, args.max_steps, args.chance_margin, args.verdict)
    except UserError as err:
        return cli_exit(err, p.prog)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
