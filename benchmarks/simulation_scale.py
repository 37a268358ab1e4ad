"""Scale by simulation: the policy table at N trials, the cost of a scheduler decision at 100 and at N trials.

    python benchmarks/simulation_scale.py --trials 10000 --searcher random     # target: under 60 s here
    python benchmarks/simulation_scale.py --trials 1000 --searcher optuna      # TPE; target: under 60 s here
    (any flag of python -m tuner.simulate: --workers, --max-steps, --grace-steps, --report-every, --policies ...)

Replays the parametric family of curves through the search's real objects
(``tuner.simulate``), every step of every curve unless ``--report-every`` says
otherwise. Default policies: no early stop, Ray's ASHA and RecheckingASHA (the
shipped one), both with the chance-level rule (``--policies`` for the other
three); with ``--searcher optuna``, no early stop and the shipped one with
early stops told to TPE as pruned and as Ray tells them (completed, with their
low-budget value). Then the cost of one RecheckingASHA decision, timed inside the replay,
at 100 trials and at ``--trials`` (target: within 2x), beside Ray's
ASHAScheduler's and the plain rule's (a percentile over the whole rung, as
RecheckingASHA decided before) on the same rung. The last line: trials/s.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from typing import Optional, Sequence

from common import machine
from reid_core.errors import UserError, cli_exit
from tuner.schedulers import stops_at_rung
from tuner.simulate import build_parser, simulate

PROG = "benchmarks/simulation_scale.py"
DECISION_TARGET = 2.0  # cost per decision at N trials / at 100 trials


def _cost(runs, scheduler: str) -> float:
    return next((r.decision_s / r.decisions * 1e6 for r in runs if r.policy.scheduler == scheduler and r.decisions), math.nan)


def plain_rule_us(run, samples: int = 2000) -> tuple[float, float]:
    """Microseconds per decision on the replay's fullest rung, ``(sorted rung, plain rule)``, same trials."""
    rung = max(run.scheduler._rungs, key=lambda r: len(r.recorded))
    q = run.scheduler._quantile
    ids = random.Random(0).choices(list(rung.recorded), k=samples)
    t0 = time.perf_counter()
    fast = [rung.stops(tid, q) for tid in ids]
    t1 = time.perf_counter()
    plain = [stops_at_rung(rung.recorded, tid, q) for tid in ids]
    t2 = time.perf_counter()
    assert fast == plain, "the sorted rung and the plain rule disagree"
    return (t1 - t0) / samples * 1e6, (t2 - t1) / samples * 1e6


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(PROG).parse_args(argv)
    if args.policies is None:
        args.policies = "none,rasha+chance" if args.searcher == "optuna" else "none,asha+chance,rasha+chance"
    try:
        if args.source is not None:
            raise UserError("--from: use python -m tuner.simulate --from EXP; this benchmark replays the parametric family")
        print(f"{machine()}; load average {os.getloadavg()[0]:.2f}")
        started = time.perf_counter()
        runs = simulate(args, time_decisions=True)
        elapsed = time.perf_counter() - started
        small = simulate(
            build_parser(PROG).parse_args([*(argv or sys.argv[1:]), "--trials", "100", "--policies", "asha,rasha"]),
            out=lambda line: None,
            time_decisions=True,
        )
    except UserError as err:
        return cli_exit(err, PROG)
    big = next((r for r in runs if r.policy.scheduler == "rasha"), None)
    if big is not None:
        at_small, at_big = _cost(small, "rasha"), _cost(runs, "rasha")
        ratio = at_big / at_small
        print(
            f"RecheckingASHA, per decision (on_trial_result, timed in the replay): {at_small:.2f} us at 100 trials, "
            f"{at_big:.2f} us at {args.trials}: ratio {ratio:.2f} (target <= {DECISION_TARGET:g}: "
            f"{'met' if ratio <= DECISION_TARGET else 'NOT met'})"
        )
        fast, plain = plain_rule_us(big)
        fullest = max(len(r.recorded) for r in big.scheduler._rungs)
        print(f"  on its fullest rung ({fullest} trials): the sorted rung {fast:.2f} us, the plain rule (percentile over the rung) {plain:.1f} us")
        if not math.isnan(_cost(runs, "asha")):
            print(f"Ray's ASHAScheduler, per result: {_cost(small, 'asha'):.2f} us at 100 trials, {_cost(runs, 'asha'):.2f} us at {args.trials}")
    total = sum(len(r.ended) for r in runs)
    print(f"{len(runs)} policy runs of {args.trials} trials in {elapsed:.1f} s: {total / elapsed:.0f} trials/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
