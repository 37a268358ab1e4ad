"""Choose early-stopping settings by simulation, before spending GPUs: replay curves through the search's real objects.

    python -m tuner.simulate --trials 1000 --workers 16           # the parametric family of curves, random search
    python -m tuner.simulate --trials 1000 --searcher optuna      # TPE, early stops told as pruned and as Ray tells them
    python -m tuner.simulate --from tune_results/my-search --grace-steps 200 --reduction-factor 3

Each policy (no early stop, Ray's ASHA, RecheckingASHA, each with and without
the chance-level rule) replays the same kind of search on a simulated clock with
``--workers`` trials at once, every step of every curve unless
``--report-every`` says otherwise (see ``tuner.simulation.engine``). ``--from EXP``
replays the curves a search recorded, in the order its trials started, under
other settings; a trial the live search stopped has no curve past its stop.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

from reid_core.flags import ArgumentParser
from reid_core.errors import UserError, cli_exit
from reid_core.chance import EARLY, VERDICTS
from tuner.simulation.curves import Curve, Family, recorded_curves
from tuner.simulation.engine import LEGEND, POLICIES, RASHA, Policy, ReplaySettings, Run, format_table, make_searcher, replay, summarise

PROG = "python -m tuner.simulate"


def build_parser(prog: str = PROG) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", metavar="EXP", help="replay the curves this experiment folder recorded")
    p.add_argument("--trials", type=int, default=1000, help="trials per policy (default 1000; with --from: its trials)")
    p.add_argument("--workers", type=int, help="trials at once (default 16; with --from: as many as the search ran at once)")
    p.add_argument("--searcher", choices=("random", "optuna"), help="random (default) or optuna (TPE, seeded)")
    p.add_argument("--space", default="default", help="search space name or YAML file (default: default)")
    p.add_argument("--max-steps", type=int, help="budget in optimizer steps of --batch-size images (default 1200)")
    p.add_argument("--grace-steps", type=int, help="grace window and first rung, in steps as --max-steps; with --from, of the search's base config (default 300)")
    p.add_argument("--first-rung-steps", type=int, help="ASHA's first rung, in steps as --grace-steps (default: the grace window; with --from: the search's)")
    p.add_argument("--reduction-factor", type=float, help="ASHA reduction factor (default 2)")
    p.add_argument("--verdict", choices=VERDICTS, help="the chance-level rule's verdict: early or window (default: the recorded search's; early for curves)")
    p.add_argument("--chance-margin", type=float, help="Go line = log(C) - margin (default 0.39)")
    p.add_argument("--batch-size", type=int, default=32, help="images per micro-batch of the parametric curves (default 32)")
    p.add_argument("--report-every", type=int, default=1, help="replay every k-th step of each curve (default 1: all)")
    p.add_argument("--policies", help=f"comma-separated subset of {', '.join(p.name for p in POLICIES)} (default all)")
    p.add_argument("--seed", type=int, default=0, help="seeds the configs, the curves' noise and TPE (default 0)")
    return p


def _positive(flag: str, value: Optional[float]) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise UserError(f"{flag} is {value}, but must be > 0")


def _policies(text: Optional[str]) -> list[Policy]:
    if text is None:
        return list(POLICIES)
    known = {p.name: p for p in POLICIES}
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(f"--policies: unknown policy '{(unknown or [text])[0]}'; use a comma-separated subset of {', '.join(known)}")
    return [known[n] for n in names]


def _overlap(curves: Sequence[Curve]) -> int:
    """The most trials a recorded search ran at once."""
    events = sorted([(c.started, 1) for c in curves] + [(c.started + c.seconds[-1], -1) for c in curves])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return max(1, most)


class RecordedOrder:
    """The 'searcher' of a recorded search: its trials' configs, in the order they started."""

    ignores_results = True

    def __init__(self, curves: Sequence[Curve]):
        self._curves, self._n = curves, 0

    def suggest(self, trial_id: str) -> dict[str, Any]:
        self._n += 1
        return self._curves[self._n - 1].config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: Optional[dict[str, Any]] = None, error: bool = False) -> None:
        pass


def plan(args) -> tuple[ReplaySettings, int, Callable[[int, dict], Curve], Callable[[Policy], tuple[str, Any]], str]:
    """``(settings, trials, new_curve, searcher_for(policy) -> (name, searcher), description)`` from the flags."""
    for flag in ("trials", "workers", "max_steps", "grace_steps", "first_rung_steps", "chance_margin", "batch_size", "report_every"):
        _positive("--" + flag.replace("_", "-"), getattr(args, flag))
    if args.reduction_factor is not None and not args.reduction_factor > 1:
        raise UserError(f"--reduction-factor is {args.reduction_factor}, but must be > 1")
    if args.source is not None:
        if args.max_steps is not None or args.searcher is not None:
            flag = "--max-steps" if args.max_steps is not None else "--searcher"
            raise UserError(f"{flag} does not apply to --from: the recorded trials are replayed as they ran")
        search, curves = recorded_curves(args.source)
        per_step = search.images_per_step or curves[0].samples[0]  # recorded; else the first trial's first step
        settings = ReplaySettings(
            grace_samples=args.grace_steps * per_step if args.grace_steps else search.grace_samples,
            max_samples=search.max_samples,
            reduction_factor=args.reduction_factor or search.reduction_factor,
            chance_margin=args.chance_margin or search.chance_margin,
            workers=args.workers or _overlap(curves),
            report_every=args.report_every,
            metric=search.metric,
            mode=search.mode,
            verdict=args.verdict or search.verdict,
            scope=search.rule_keywords()["scope"],
            first_rung_samples=args.first_rung_steps * per_step if args.first_rung_steps else search.first_rung_samples,
        )
        if settings.rung_samples > settings.max_samples:
            raise UserError(f"--first-rung-steps {args.first_rung_steps} is past the search's budget; lower it")
        if settings.metric != "ce_ema":
            raise UserError(f"--from: the search optimised {settings.metric}; the simulation replays ce_ema searches only")
        what = f"{len(curves)} recorded trials of {args.source}"
        return settings, len(curves), lambda n, config: curves[n], lambda policy: ("recorded", RecordedOrder(curves)), what
    from search_spaces import load_space, to_tune

    domains = to_tune(load_space(args.space))
    max_steps, grace_steps = args.max_steps or 1200, args.grace_steps or 300
    if grace_steps > max_steps:
        raise UserError(f"--grace-steps {grace_steps} exceeds --max-steps {max_steps}; lower --grace-steps or raise --max-steps")
    if (args.first_rung_steps or 0) > max_steps:
        raise UserError(f"--first-rung-steps {args.first_rung_steps} exceeds --max-steps {max_steps}; lower it")
    family = Family(batch_size=args.batch_size, margin=args.chance_margin or 0.39)
    settings = ReplaySettings(
        grace_samples=grace_steps * args.batch_size,
        max_samples=max_steps * args.batch_size,
        reduction_factor=args.reduction_factor or 2.0,
        first_rung_samples=(args.first_rung_steps or 0) * args.batch_size,
        verdict=args.verdict or EARLY,
        chance_margin=args.chance_margin or 0.39,
        workers=args.workers or 16,
        report_every=args.report_every,
    )
    kind = args.searcher or "random"

    def searcher_for(policy: Policy) -> tuple[str, Any]:
        name = kind if kind == "random" else ("optuna (pruned)" if policy.pruned else "optuna (as Ray)")
        return name, make_searcher(kind, domains, settings, args.seed, pruned=policy.pruned)

    def new_curve(n: int, config: dict) -> Curve:
        return family.curve(config, max_steps, (args.seed, n))

    what = f"{args.trials} trials of the parametric family over the '{args.space}' space, {kind} search, {max_steps} steps"
    return settings, args.trials, new_curve, searcher_for, what


def policy_runs(policies: Sequence[Policy], searcher: Optional[str]) -> list[Policy]:
    """With TPE, every policy that stops trials runs twice: early stops told as pruned, and as Ray tells them."""
    if searcher != "optuna":
        return list(policies)
    return [q for p in policies for q in ([p] if p.name == "none" else [p, Policy(p.scheduler, p.chance, pruned=False)])]


def simulate(args, out: Callable[[str], None] = print, time_decisions: bool = False) -> list[Run]:
    """Replay every policy the flags ask for; print the header, the table and its legend; return the runs."""
    settings, trials, new_curve, searcher_for, what = plan(args)
    policies = policy_runs(_policies(args.policies), None if args.source else (args.searcher or "random"))
    every = "every step of every curve" if settings.report_every == 1 else f"every {settings.report_every}th step of each curve (and its last)"
    out(f"{what}; {settings.workers} workers; {every} replayed")
    out(
        f"grace window {settings.grace_samples:g} images, first rung {settings.rung_samples:g}, budget {settings.max_samples:g}, reduction factor "
        f"{settings.reduction_factor:g}, chance margin {settings.chance_margin:g}"
    )
    runs = []
    for policy in policies:
        name, searcher = searcher_for(policy)
        runs.append(replay(policy, settings, trials, new_curve, searcher, name, time_decisions=time_decisions))
    rows = [summarise(run, settings) for run in runs]
    out(format_table(rows))
    out(LEGEND)
    censored = sum(r["censored"] for r in rows)
    if censored:
        out(f"{censored} trial-runs reached the end of a recorded curve the live search had stopped (censored)")
    unchanged = not (args.grace_steps or args.first_rung_steps or args.verdict or args.reduction_factor or args.chance_margin)
    if args.source is not None and unchanged:  # the live search's own settings: the replay should match it
        agree, total, agree_free, free = live_agreement(settings, recorded_curves(args.source)[1])
        out(
            f"agreement with the live search (RecheckingASHA + chance-level rule, these settings): {agree}/{total} "
            f"trials end the same way; {agree_free}/{free} of those whose end does not depend on arrival order"
        )
    return runs


def live_agreement(settings: ReplaySettings, curves: Sequence[Curve], orders: int = 8, seed: int = 0) -> tuple[int, int, int, int]:
    """``(agree, trials, agree among order-free, order-free)``: how each trial ends when its recorded curve is
    replayed under ``settings`` (RecheckingASHA and the chance-level rule, as the live search ran) against how
    it ended live. A trial's end is order-free if it is the same when the trials start in ``orders`` shuffled
    orders with their step times scaled by 0.8-1.25: then the live arrival order cannot have decided it."""
    policy = Policy(RASHA, True)

    def ends(order: Sequence[Curve]) -> dict[str, str]:
        run = replay(policy, settings, len(order), lambda n, config: order[n], RecordedOrder(order), "recorded")
        return {e.trial_id: e.reason for e in run.ended}

    replayed = ends(curves)
    rng = random.Random(seed)
    others = []
    for _ in range(orders):
        shuffled = [replace(c, seconds=[t * rng.uniform(0.8, 1.25) for t in c.seconds]) for c in curves]
        rng.shuffle(shuffled)
        others.append(ends(shuffled))
    live = {c.trial_id: c.end for c in curves}
    free = [tid for tid in replayed if all(o[tid] == replayed[tid] for o in others)]
    agree = sum(replayed[tid] == live[tid] for tid in replayed)
    return agree, len(replayed), sum(replayed[tid] == live[tid] for tid in free), len(free)


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        started = time.perf_counter()
        runs = simulate(args)
    except UserError as err:
        return cli_exit(err, prog)
    total, seconds = sum(len(r.ended) for r in runs), time.perf_counter() - started
    print(f"{total} trials replayed in {seconds:.1f} s: {total / seconds:.0f} trials/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
