"""How much of early_stop.py's figure is arrival order: replay a kept (a) in many orders, per first rung.

    python benchmarks/rung_orders.py DIR [DIR ...] [--rungs 50 75 100 200] [--reduction-factors 2 3] [--orders 16]

Each DIR is what ``benchmarks/early_stop.py --keep DIR`` left (its ``no-early-stop`` experiment: every trial's
whole curve and head metrics, recorded without early stopping). For each first rung and reduction factor, the
recorded curves go through the search's real scheduler (RecheckingASHA) and chance-level rule (early verdict,
grace 200 steps as (b) runs) in ``--orders`` arrival orders: the trials shuffled and their step times scaled by
0.8-1.25, as ``reid-tune simulate``'s agreement check does. Printed per setting: the share of (a)'s
trial-samples spent (median and worst order), in how many orders the best is kept (within 0.05 of (a)'s), and in
how many both targets hold (<= 15%, best kept). With 10 trials the order decides which trial meets a rung's
cutoff first, and so who is cut: the live run is one draw of it.
"""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from common import machine
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser
from tuner.simulate import RecordedOrder, build_parser as simulate_parser, plan
from tuner.simulation.curves import recorded_curves
from tuner.simulation.engine import RASHA, Policy, replay, summarise

SHARE, KEPT = 0.15, 0.05  # issue 24's targets: trial-samples of (a), best within this of (a)'s


def orders(source: Path, rung: int, factor: float, n: int, grace_steps: int) -> list[tuple[float, bool]]:
    """``(share of (a)'s trial-samples, best kept)`` in each of ``n`` arrival orders."""
    flags = ["--from", str(source), "--grace-steps", str(grace_steps), "--first-rung-steps", str(rung),
             "--reduction-factor", str(factor), "--verdict", "early"]  # fmt: skip
    settings = plan(simulate_parser().parse_args(flags))[0]
    curves = recorded_curves(source)[1]
    rng = random.Random(0)  # the same n orders for every setting
    outcomes = []
    for _ in range(n):
        shuffled = [replace(c, seconds=[t * rng.uniform(0.8, 1.25) for t in c.seconds]) for c in curves]
        rng.shuffle(shuffled)
        run = replay(Policy(RASHA, True), settings, len(shuffled), lambda k, config: shuffled[k], RecordedOrder(shuffled), "recorded")
        share = sum(e.samples for e in run.ended) / (len(shuffled) * settings.max_samples)
        outcomes.append((share, summarise(run, settings)["regret"] <= KEPT))
    return outcomes


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(prog="python benchmarks/rung_orders.py", description=__doc__.split("\n\n")[0])
    p.add_argument("kept", nargs="+", metavar="DIR", help="folders an early_stop.py --keep run left")
    p.add_argument("--rungs", type=int, nargs="+", default=[50, 75, 100, 200], help="first rungs, steps at accumulation 1")
    p.add_argument("--reduction-factors", type=float, nargs="+", default=[2.0, 3.0], help="ASHA reduction factors (default 2 3)")
    p.add_argument("--orders", type=int, default=16, help="arrival orders per setting (default 16)")
    p.add_argument("--grace-steps", type=int, default=200, help="the chance-level rule's window, as (b) ran (default 200)")
    args = p.parse_args(argv)
    sources = [Path(d) / "no-early-stop" for d in args.kept]
    missing = [s.parent for s in sources if not (s / "reid_tune.json").is_file()]
    if missing:
        return cli_exit(UserError(f"{missing[0]} holds no no-early-stop experiment; pass a folder an early_stop.py --keep run left"), p.prog)
    if args.orders < 1 or min(args.rungs) < 1:
        return cli_exit(UserError("--orders and --rungs must be >= 1"), p.prog)
    print(f"first rung and arrival order: {len(sources)} kept (a), {args.orders} orders a setting\non {machine()}")
    print(f"{'(a)':<40} {'rf':>3} {'rung':>5} {'share median':>13} {'worst':>6} {'best kept':>10} {'both':>6}")
    for source in sources:
        for factor in args.reduction_factors:
            for rung in args.rungs:
                outcomes = orders(source, rung, factor, args.orders, args.grace_steps)
                kept = sum(k for _, k in outcomes)
                both = sum(share <= SHARE and k for share, k in outcomes)
                shares_sorted = sorted(share for share, _ in outcomes)
                print(
                    f"{str(source.parent):<40} {factor:>3g} {rung:>5} {shares_sorted[len(outcomes) // 2]:>13.3f} "
                    f"{shares_sorted[-1]:>6.3f} {kept:>5}/{args.orders:<4} {both:>3}/{args.orders}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
