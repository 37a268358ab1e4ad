"""Early-stop efficiency: one seeded search with and without early stopping; best ce_ema and trial-samples.

    python benchmarks/early_stop.py [--num-trials 10] [--max-steps 2400] [--grace-steps 200] [--space default]
                                    [--seed 0] [--reduction-factor 2] [--keep DIR] [--set key=value ...]
    python benchmarks/early_stop.py --from DIR      # compare again the two experiments --keep DIR left

Runs ``python -m tuner.search`` twice on one local Ray, with the same space,
Optuna seed, number of trials, budget and base config (``--set``):

- (a) no early stopping: ``--grace-steps`` equal to ``--max-steps``, so ASHA's
  only rung is the budget and the chance-level rule looks at the last step
  only: every trial runs to ``max_steps`` (checked);
- (b) early stopping as a user runs it: ASHA on ``samples`` (grace
  ``--grace-steps``, ``--reduction-factor``; ``tuner.schedulers.RecheckingASHA``)
  plus the chance-level rule.

Optuna's TPE samples its first 10 trials at random from the seed, so up to 10
trials the two runs try the same configs (checked and printed); beyond that
TPE's proposals differ because the early stops feed it other values, which is
part of what is compared. Pre-flight checks are skipped in both.

Prints each trial side by side, the best final ``ce_ema`` of each run ((a):
the lowest of its trials, all run to the budget; (b): the winner the search
exports, its best completed trial) and both totals of trial-samples (images
every trial saw, summed). ``--keep DIR`` keeps the two experiment folders
(``DIR/no-early-stop``, ``DIR/early-stop``) for ``python -m tuner.report`` or
``benchmarks/stuck_latency.py DIR/early-stop``.

Target: (b)'s best ce_ema within 0.05 of (a)'s, with at most 25% of (a)'s
trial-samples. A trial that survives the first rung has spent ``grace/max`` of
its budget there already, so 25% needs ``max_steps`` of several grace windows
(the default: 12, a 200-step window as the seed team's 200-300); the shipped
search's default (grace 300 of 450 steps) cannot reach it by construction.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from common import machine, read_searches, run_searches
from reid_core.flags import ArgumentParser, add_config_arguments
from reid_core.errors import UserError, cli_exit
from reid_core.schema import STUCK
from search_spaces import load_space
from tuner.results import best_trial, compute_account

BEST_TOLERANCE = 0.05  # (b)'s best ce_ema may be this much above (a)'s
SAMPLES_TARGET = 0.25  # (b)'s trial-samples at most this share of (a)'s
RUNS = (("no-early-stop", "(a) no early stopping"), ("early-stop", "(b) ASHA + chance-level rule"))  # folder, title


def search_argv(args, name: str) -> list[str]:
    grace = args.max_steps if name == "no-early-stop" else args.grace_steps
    return [
        *(["--config", args.config] if args.config else []),
        *(["--set", *args.overrides] if args.overrides else []),
        "--space", args.space,
        "--num-trials", str(args.num_trials),
        "--max-steps", str(args.max_steps),
        "--grace-steps", str(grace),
        # (a) stops nothing early: the rule at its last step only; (b) as a user runs it (the early verdict by default)
        "--verdict", "window" if name == "no-early-stop" else args.verdict,
        *(["--first-rung-steps", str(args.first_rung_steps)] if args.first_rung_steps and name == "early-stop" else []),
        "--reduction-factor", str(args.reduction_factor),
        "--seed", str(args.seed),
        *(["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else []),
        "--skip-preflight",
        "--quiet",
    ]  # fmt: skip


def kept_argv(search, args) -> list[str]:
    """The (a) argv that a kept (a) experiment's settings stand for (what --against checks)."""
    import argparse

    steps = round(search.max_samples / search.images_per_step)
    kept = argparse.Namespace(**{**vars(args), "num_trials": search.num_trials, "max_steps": steps, "seed": search.seed})
    return search_argv(kept, "no-early-stop")


def _key(sampled: dict[str, Any], space: Sequence[str]) -> tuple:
    """A trial's sampled values, rounded so that the same draw in both runs compares equal."""
    return tuple(round(v, 12) if isinstance(v, float) else v for v in (sampled.get(k) for k in space))


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.0f}" if value >= 1000 else f"{value:.3g}"
    return "-" if value is None else str(value)


def compare(results: dict[str, dict[str, Any]], space: Sequence[str]) -> float:
    """Print the trials side by side and the two targets; return (b)'s share of (a)'s trial-samples."""
    a, b = results["no-early-stop"], results["early-stop"]
    # Side by side, trial by trial: matched on the sampled values.
    rows_a = {_key(r, space): r for r in a["frame"].to_dict("records")}
    rows_b = {_key(r, space): r for r in b["frame"].to_dict("records")}
    head = "".join(f"{k[:16]:>17}" for k in space)
    print(f"{head}  {'(a) ce_ema':>10} {'go at':>7}   {'(b) end':<16} {'ce_ema':>7} {'samples':>8}")

    def by_final_ce_ema(key: tuple) -> float:
        value = rows_a.get(key, rows_b.get(key))["final_ce_ema"]
        return value if _finite(value) else math.inf

    for key in sorted(set(rows_a) | set(rows_b), key=by_final_ce_ema):
        ra, rb = rows_a.get(key, {}), rows_b.get(key, {})
        print(
            "".join(f"{_fmt(v):>17}" for v in key)
            + f"  {_fmt(ra.get('final_ce_ema')):>10} {_fmt(ra.get('go_samples')):>7}"
            + f"   {rb.get('end_reason', 'not sampled'):<16} {_fmt(rb.get('final_ce_ema')):>7} {_fmt(rb.get('samples')):>8}"
        )
    print(f"same configs in both runs: {len(set(rows_a) & set(rows_b))} of {len(rows_a)}")
    short = [r["trial_id"] for r in rows_a.values() if r["samples"] < a["search"].max_samples]
    if short:
        print(f"warning: in (a) {len(short)} trial(s) stopped before the budget: {', '.join(short)}")
    for (name, title) in RUNS:
        counts = results[name]["frame"]["end_reason"].value_counts().to_dict()
        print(f"{title}: " + ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())))
    # A trial (b) stopped at chance that (a), running it on, saw cross the Go line: a learner lost.
    stuck_b = [k for k, r in rows_b.items() if r["end_reason"] == STUCK]
    learners = [k for k in stuck_b if k in rows_a and _finite(rows_a[k]["go_samples"])]
    crossed = ", ".join(f"{rows_a[k]['go_samples']:,.0f}" for k in learners)
    print(
        f"stopped as stuck_at_chance in (b) but crossing the Go line in (a): {len(learners)} of {len(stuck_b)}"
        + (f" (at {crossed} images)" if learners else "")
    )

    # (a)'s best: the lowest final ce_ema, every trial having run its budget; (b)'s: what the search exports.
    ce_a = a["frame"]["final_ce_ema"].astype(float)
    winner = best_trial(b["frame"], b["search"])
    best_a = float(ce_a.min()) if ce_a.notna().any() else math.nan
    best_b = float(winner["final_ce_ema"]) if winner is not None else math.nan
    spent_a, spent_b = (compute_account(run["frame"], run["search"])["spent"] for run in (a, b))
    share = spent_b / spent_a if spent_a else math.nan
    wall = f"; wall: (a) {a['wall']:.0f} s, (b) {b['wall']:.0f} s" if _finite(a["wall"]) else ""
    print(f"best ce_ema: (a) {best_a:.3f}, (b) {best_b:.3f}; trial-samples: (a) {spent_a:,}, (b) {spent_b:,}{wall}")
    gap = best_b - best_a
    if winner is None:
        print(f"target: best within {BEST_TOLERANCE} of (a): (b) has no winner (every trial stopped at chance, diverged or failed), missed")
    else:
        print(f"target: best within {BEST_TOLERANCE} of (a): {gap:+.3f}, {'met' if gap <= BEST_TOLERANCE else 'missed'}")
    print(f"target: at most {SAMPLES_TARGET:.0%} of (a)'s trial-samples: {share:.1%}, {'met' if share <= SAMPLES_TARGET else 'missed'}")
    return share


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/early_stop.py", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--space", default="default", help="shipped space name or a YAML file (default: default)")
    parser.add_argument("--num-trials", type=int, default=10, help="trials per run (default 10, all from Optuna's random start-up)")
    parser.add_argument("--max-steps", type=int, default=2400, help="budget per trial in steps at accumulation 1 (default 2400)")
    parser.add_argument("--grace-steps", type=int, default=200, help="(b)'s grace window in steps at accumulation 1 (default 200)")
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="(b)'s ASHA reduction factor (default 2)")
    parser.add_argument("--first-rung-steps", type=int, help="(b)'s first ASHA rung in steps at accumulation 1 (default: its grace window)")
    parser.add_argument("--verdict", choices=("early", "window"), default="early", help="(b)'s chance-level verdict (default early)")
    parser.add_argument("--seed", type=int, default=0, help="Optuna's seed, the same in both runs (default 0)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what resources allow)")
    parser.add_argument("--keep", metavar="DIR", help="keep both experiments under DIR (default: removed)")
    parser.add_argument("--from", dest="source", metavar="DIR", help="compare the two experiments a --keep run left in DIR")
    parser.add_argument("--against", metavar="DIR", help="run (b) only, against the (a) a --keep run left in DIR (same flags but (b)'s): "
                        "another first rung or verdict for the price of (b)")
    args = parser.parse_args(argv)
    if not 0 < args.grace_steps < args.max_steps or args.num_trials < 1:
        parser.error(
            f"--grace-steps is {args.grace_steps}, --max-steps {args.max_steps} and --num-trials {args.num_trials}, "
            "but must be 0 < --grace-steps < --max-steps and --num-trials >= 1"
        )
    if args.keep and any((Path(args.keep) / name).exists() for name, _ in RUNS):
        parser.error(f"--keep '{args.keep}' already holds no-early-stop/ or early-stop/; pass a new folder")
    try:
        if args.source:
            results = read_searches(Path(args.source), [name for name, _ in RUNS])
            search = results["early-stop"]["search"]
            space = list(search.space)
            setup = (
                f"{args.source}: {len(results['no-early-stop']['frame'])} trials, up to "
                f"{search.max_samples:,} images, (b) grace {search.grace_samples:,} images"
            )
        else:
            space = list(load_space(args.space))
            setup = (
                f"space {args.space} ({', '.join(space)}), {args.num_trials} trials, seed {args.seed}, up to "
                f"{args.max_steps} steps, (b) grace {args.grace_steps} steps, ASHA reduction factor "
                f"{args.reduction_factor:g}{', ' + ' '.join(args.overrides) if args.overrides else ''}"
            )
        print(f"early-stop efficiency: {setup}\non {machine()}", flush=True)
        if not args.source:
            kept_a = read_searches(Path(args.against), ["no-early-stop"]) if args.against else {}
            if kept_a and search_argv(args, "no-early-stop")[:-2] != kept_argv(kept_a["no-early-stop"]["search"], args)[:-2]:
                raise UserError(f"--against '{args.against}': its (a) was run with other flags; pass the same --space, --num-trials, "
                                "--max-steps, --seed and --set")  # fmt: skip
            runs = [(name, title, search_argv(args, name)) for name, title in RUNS if name not in kept_a]
            results = {**kept_a, **run_searches(runs, Path(args.keep).resolve() if args.keep else None)}
    except UserError as err:
        return cli_exit(err, parser.prog)
    share = compare(results, space)
    if args.keep:
        print(f"kept {Path(args.keep).resolve() / 'no-early-stop'} and {Path(args.keep).resolve() / 'early-stop'}")
    print(f"trial-samples ratio (b / a): {share:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
