"""PBT against ASHA on the same budget: best ce_ema and images spent, one seeded search of each.

    python benchmarks/pbt.py [--num-trials 8] [--max-steps 450] [--grace-steps 300] [--perturbation-interval 50]
                             [--space default] [--seed 0] [--keep DIR] [--set key=value ...]
    python benchmarks/pbt.py --from DIR      # compare again the three experiments --keep DIR left

Runs ``python -m tuner.search`` three times on one local Ray, with the same space, seed, number of
trials, budget, grace window and base config (``--set``), pre-flight skipped:

- (a) ASHA + TPE: the default search (``RecheckingASHA``, Optuna's TPE);
- (b) ASHA + random draws (``--searcher random``): the very configs (c) starts from;
- (c) PBT (``--scheduler pbt``): the same random draws, then, from the grace window on, every
  ``--perturbation-interval`` steps the bottom quarter continues from a copy of a top trial's
  checkpoint with ``head_lr`` perturbed.

All three may spend at most ``num_trials x max_steps`` images (equal compute offered); what each
spends differs, since ASHA cuts trials and PBT runs every surviving one to the budget, so both the
best ``ce_ema`` (the winner each search exports) and the images spent (every step a trial trained,
``samples_trained`` under PBT: a copied checkpoint's images count once, for the trial that trained them)
are printed, with the wall time. No target: the result is recorded whichever wins.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from common import machine, read_searches, run_searches
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser, add_config_arguments
from tuner.results import best_trial, compute_account

RUNS = (
    ("asha-tpe", "(a) ASHA + TPE", []),
    ("asha-random", "(b) ASHA + random", ["--searcher", "random"]),
    ("pbt", "(c) PBT", ["--scheduler", "pbt"]),
)  # folder, title, flags


def search_argv(args, flags: list[str]) -> list[str]:
    return [
        *(["--config", args.config] if args.config else []),
        *(["--set", *args.overrides] if args.overrides else []),
        "--space", args.space,
        "--num-trials", str(args.num_trials),
        "--max-steps", str(args.max_steps),
        "--grace-steps", str(args.grace_steps),
        "--perturbation-interval", str(args.perturbation_interval),
        "--seed", str(args.seed),
        *(["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else []),
        *flags,
        "--skip-preflight",
        "--quiet",
    ]  # fmt: skip


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """The exported winner's final ce_ema, the images spent and the budget, the end reasons."""
    frame, search = run["frame"], run["search"]
    winner = best_trial(frame, search)
    account = compute_account(frame, search)
    out = {
        "best": float(winner["final_ce_ema"]) if winner is not None else math.nan,
        "spent": account["spent"],
        "budget": account["budget"],
        "reasons": frame["end_reason"].value_counts().to_dict(),
        "winner": winner,
    }
    if "perturbations" in frame:
        out["exploits"] = int(frame["perturbations"].sum())
    return out


def compare(results: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """Print one line per run and PBT's winner; return (c)'s best minus (a)'s, and (c)'s images over (a)'s."""
    rows = {name: summary(results[name]) for name, _, _ in RUNS}
    print(f"{'run':<20} {'best ce_ema':>11} {'images spent':>13} {'of budget':>10} {'wall':>6}  end reasons")
    for name, title, _ in RUNS:
        r, wall = rows[name], results[name]["wall"]
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(r["reasons"].items()))
        wall_text = f"{wall:.0f} s" if math.isfinite(wall) else "-"
        print(f"{title:<20} {r['best']:>11.3f} {r['spent']:>13,} {r['spent'] / r['budget']:>10.1%} {wall_text:>6}  {reasons}")
    pbt = rows["pbt"]
    winner = pbt["winner"]
    if winner is not None:
        schedule = winner.get("head_lr_schedule")
        print(f"PBT: {pbt.get('exploits', 0)} exploits; winner {winner['trial_id']}, head_lr schedule {schedule}")
    for name in ("asha-tpe", "asha-random"):
        title = dict((n, t) for n, t, _ in RUNS)[name]
        gap, share = pbt["best"] - rows[name]["best"], pbt["spent"] / rows[name]["spent"]
        verdict = "no winner to compare" if math.isnan(gap) else "tie" if abs(gap) < 5e-4 else "PBT better" if gap < 0 else "PBT worse"
        print(f"(c) vs {title}: best ce_ema {gap:+.3f} ({verdict}), images spent x{share:.2f}")
    return pbt["best"] - rows["asha-tpe"]["best"], pbt["spent"] / rows["asha-tpe"]["spent"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/pbt.py", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--space", default="default", help="shipped space name or a YAML file (default: default)")
    parser.add_argument("--num-trials", type=int, default=8, help="trials per search (default 8)")
    parser.add_argument("--max-steps", type=int, default=450, help="budget per trial in steps at accumulation 1 (default 450)")
    parser.add_argument("--grace-steps", type=int, default=300, help="grace window in steps at accumulation 1 (default 300)")
    parser.add_argument("--perturbation-interval", type=int, default=50, help="(c)'s steps between looks (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="the searchers' seed, the same in all three (default 0)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what resources allow)")
    parser.add_argument("--keep", metavar="DIR", help="keep the three experiments under DIR (default: removed)")
    parser.add_argument("--from", dest="source", metavar="DIR", help="compare the three experiments a --keep run left in DIR")
    args = parser.parse_args(argv)
    if args.num_trials < 2 or not 0 < args.grace_steps <= args.max_steps:
        parser.error(
            f"--num-trials is {args.num_trials}, --grace-steps {args.grace_steps} and --max-steps {args.max_steps}, "
            "but PBT needs --num-trials >= 2 and 0 < --grace-steps <= --max-steps"
        )
    if args.keep and any((Path(args.keep) / name).exists() for name, _, _ in RUNS):
        parser.error(f"--keep '{args.keep}' already holds an experiment of this benchmark; pass a new folder")
    try:
        if args.source:
            results = read_searches(Path(args.source), [name for name, _, _ in RUNS])
            setup = f"{args.source}"
        else:
            setup = (
                f"space {args.space}, {args.num_trials} trials, seed {args.seed}, up to {args.max_steps} steps, grace "
                f"{args.grace_steps} steps, PBT every {args.perturbation_interval} steps"
                + (f", {' '.join(args.overrides)}" if args.overrides else "")
            )
        print(f"PBT vs ASHA on one budget: {setup}\non {machine()}", flush=True)
        if not args.source:
            runs = [(name, title, search_argv(args, flags)) for name, title, flags in RUNS]
            results = run_searches(runs, Path(args.keep).resolve() if args.keep else None)
    except UserError as err:
        return cli_exit(err, parser.prog)
    gap, share = compare(results)
    if args.keep:
        print(f"kept {', '.join(str(Path(args.keep).resolve() / name) for name, _, _ in RUNS)}")
    print(f"PBT vs ASHA+TPE: best ce_ema {gap:+.3f}, images spent ratio {share:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
