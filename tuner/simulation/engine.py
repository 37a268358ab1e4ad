"""The replay engine: learning curves through the search's real scheduler, chance-level rule and searcher.

No Ray cluster and no training: ``workers`` trials run at once; each reports
its curve step by step at the times the curve says, and every result goes
through the objects the live search uses, in the order Tune calls them (the
chance-level rule, then the scheduler, then the searcher; a stopped trial's
last result to the scheduler's and the searcher's ``on_trial_complete``).
Policies: no early stop, Ray's ``ASHAScheduler``, ``RecheckingASHA``, each with
and without the chance-level rule. The command is ``tuner.simulate``.
"""

from __future__ import annotations

import heapq
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from reid_core.chance import EARLY, ChanceLevelRule
from reid_core.early import Scope
from reid_core.ending import end_reason
from reid_core.schema import ASHA as CUT
from reid_core.schema import COMPLETED, STUCK, UNFINISHED
from tuner.schedulers import RecheckingASHA
from tuner.simulation.curves import DIVERGING, Curve

NONE, ASHA, RASHA = "none", "asha", "rasha"
CENSORED = UNFINISHED  # a recorded curve ended (the live search stopped it) where this policy would go on
STOP = TrialScheduler.STOP


@dataclass(frozen=True)
class Policy:
    scheduler: str  # none, asha (Ray's ASHAScheduler), rasha (RecheckingASHA)
    chance: bool  # the chance-level rule on
    pruned: bool = True  # optuna only: early stops told as pruned (PruningOptunaSearch), else as Ray tells them

    @property
    def name(self) -> str:
        return self.scheduler + ("+chance" if self.chance else "")


POLICIES = tuple(Policy(s, c) for s in (NONE, ASHA, RASHA) for c in (False, True))


@dataclass(frozen=True)
class ReplaySettings:
    """What one replay runs under: a search's early-stopping settings (as `tuner.settings.SearchSettings` holds
    them, in images), plus the simulated workers and how many of a curve's steps are replayed."""

    grace_samples: float  # the first rung and the chance-level rule's grace window, in images
    max_samples: float  # the budget, in images
    reduction_factor: float
    chance_margin: float
    workers: int
    report_every: int = 1  # replay every k-th step of a curve (and its last)
    metric: str = "ce_ema"
    mode: str = "min"
    verdict: str = EARLY  # the chance-level rule's (a recorded curve with head metrics gets the early verdict)
    scope: Scope = Scope()  # ... and what it may read of the runs (the recorded search's base config)
    first_rung_samples: float = 0  # ASHA's first rung, in images; 0: at the grace window (--first-rung-steps)

    @property
    def rung_samples(self) -> float:
        return self.first_rung_samples or self.grace_samples


@dataclass
class Ended:
    """How one trial ended (its curve is not kept: 10,000 of them would hold gigabytes)."""

    config: dict[str, Any]
    kind: str  # the curve's kind (tuner.simulation.curves)
    final: Optional[float]  # the curve's ce_ema at the budget (None: unknown)
    chance_ce: float
    trial_id: Optional[str]  # a recorded curve's trial id
    reason: str  # completed, asha, stuck_at_chance, diverged, censored
    samples: int  # images seen when it ended
    compute_s: float  # seconds it ran
    value: float  # its last reported metric


@dataclass
class Run:
    policy: Policy
    searcher: str
    ended: list[Ended] = field(default_factory=list)
    sim_s: float = 0.0  # the simulated clock at the end
    real_s: float = 0.0  # seconds this replay took
    results: int = 0  # results replayed
    decisions: int = 0  # scheduler calls timed (time_decisions)
    decision_s: float = 0.0
    scheduler: Any = None  # the scheduler, as the replay left it


class SeededRandom:
    """Random search over the same space: each trial's config drawn from ``(seed, trial number)``, so every
    policy replays the same configs in the same order."""

    def __init__(self, domains: dict[str, Any], seed: int):
        import numpy as np

        self._domains, self._np, self._seed, self._n = domains, np, seed, 0

    def suggest(self, trial_id: str) -> dict[str, Any]:
        state = self._np.random.RandomState([self._seed, self._n])
        self._n += 1
        return {k: _plain(d.sample(random_state=state)) for k, d in self._domains.items()}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: Optional[dict[str, Any]] = None, error: bool = False) -> None:
        pass


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def make_searcher(kind: str, domains: dict[str, Any], settings: ReplaySettings, seed: int, pruned: bool = True) -> Any:
    """``random``, or ``optuna``: Ray's OptunaSearch (TPE, seeded) or, with ``pruned``, PruningOptunaSearch."""
    if kind == "random":
        return SeededRandom(domains, seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from tuner.searchers import PruningOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Ray's OptunaSearch logs a warning per diverged trial it cannot tell (a NaN value): the table counts them.
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
    common = dict(metric=settings.metric, mode=settings.mode, seed=seed)
    searcher = PruningOptunaSearch(budget_attr="samples", max_budget=settings.max_samples, **common) if pruned else OptunaSearch(**common)
    searcher.set_search_properties(None, None, domains)  # as Tune does with the param_space
    return searcher


def _scheduler(policy: Policy, settings: ReplaySettings) -> Any:
    if policy.scheduler == NONE:
        return None
    cls = ASHAScheduler if policy.scheduler == ASHA else RecheckingASHA
    scheduler = cls(
        time_attr="samples",
        metric=settings.metric,
        mode=settings.mode,
        grace_period=settings.rung_samples,
        max_t=settings.max_samples,
        reduction_factor=settings.reduction_factor,
    )
    return scheduler


def replay(
    policy: Policy,
    settings: ReplaySettings,
    trials: int,
    new_curve: Callable[[int, dict[str, Any]], Curve],
    searcher: Any,
    searcher_name: str = "random",
    time_decisions: bool = False,
) -> Run:
    """Run ``trials`` trials on ``settings.workers`` simulated workers; ``new_curve(number, config)`` gives the
    curve of the config the searcher proposed for trial ``number``."""
    run = Run(policy, searcher_name)
    scheduler = run.scheduler = _scheduler(policy, settings)
    listens = not getattr(searcher, "ignores_results", False)  # random search: skip the calls that do nothing
    every, budget, metric = settings.report_every, settings.max_samples, settings.metric
    clock, heappush, heapreplace, heappop = time.perf_counter, heapq.heappush, heapq.heapreplace, heapq.heappop
    started_at = clock()
    heap: list[tuple[float, int, list]] = []  # (time of the trial's next result, trial number, its state)
    launched = 0

    def launch(now: float) -> None:
        nonlocal launched
        if launched >= trials:
            return
        tid = f"{launched:06d}"
        curve = new_curve(launched, searcher.suggest(tid))
        trial = SimpleNamespace(trial_id=tid)
        if scheduler is not None:
            scheduler.on_trial_add(None, trial)
        # the search's rule; a curve of ce alone (a modelled one) gives the early verdict nothing to read: the window
        rule = (
            ChanceLevelRule(settings.grace_samples, settings.chance_margin, verdict=settings.verdict, budget_samples=settings.max_samples,
                            scope=settings.scope)
            if policy.chance
            else None
        )  # fmt: skip
        last = len(curve.samples) - 1
        first = min(every - 1, last)
        # the trial's state: index of its next result, and what reading a result needs, looked up once
        state = [first, last, now, trial, rule, curve, curve.samples, curve.ce, curve.ce_ema, curve.seconds]
        heappush(heap, (now + curve.seconds[first], launched, state))
        launched += 1

    for _ in range(settings.workers):
        launch(0.0)
    while heap:
        now, number, state = heap[0]
        i, last, start, trial, rule, curve, samples, ce, ce_ema, seconds = state
        result = {
            "samples": samples[i],
            "ce": ce[i],
            "ce_ema": ce_ema[i],
            "chance_ce": curve.chance_ce,
            "training_iteration": i + 1,
        }
        if curve.head is not None:
            result.update(curve.head[i])
        run.results += 1
        verdict = rule(result) if rule is not None else None
        stopped = False
        if verdict is None and scheduler is not None:
            if time_decisions:
                t0 = clock()
                decision = scheduler.on_trial_result(None, trial, result)
                run.decision_s += clock() - t0
                run.decisions += 1
            else:
                decision = scheduler.on_trial_result(None, trial, result)
            stopped = decision == STOP
        if verdict is None and not stopped and listens:
            searcher.on_trial_result(trial.trial_id, result)
        if verdict is None and not stopped and i < last:
            i = state[0] = i + every if i + every < last else last
            heapreplace(heap, (start + seconds[i], number, state))
            continue
        # the one decision of why a run ended (reid_core.ending), as the live search makes it; a recorded curve that
        # ends where this policy would go on is `unfinished` there: censored here
        reason = end_reason(verdict=verdict, last=result, max_samples=budget, stopped=stopped, scheduler=CUT)
        heappop(heap)
        if scheduler is not None:
            scheduler.on_trial_complete(None, trial, result)
        searcher.on_trial_complete(trial.trial_id, result=result)
        run.ended.append(
            Ended(curve.config, curve.kind, curve.final, curve.chance_ce, curve.trial_id, reason, result["samples"], seconds[i], result[metric])
        )
        run.sim_s = max(run.sim_s, now)
        launch(now)
    run.real_s = clock() - started_at
    return run


def summarise(run: Run, settings: ReplaySettings) -> dict[str, Any]:
    """One row of the policy table (see `format_table` for the columns)."""
    ended = run.ended
    known = [e.final for e in ended if e.final is not None]
    best = min(known) if known else math.nan
    done = [e for e in ended if e.reason == COMPLETED and math.isfinite(e.value)] or [e for e in ended if math.isfinite(e.value)]
    chosen = min(done, key=lambda e: e.value) if done else None
    chosen_final = chosen.final if chosen is not None and chosen.final is not None else math.nan
    good_line = sorted(known)[max(0, len(known) // 10 - 1)] if known else -math.inf  # the pool's best tenth
    go_line = (ended[0].chance_ce - settings.chance_margin) if ended else 0.0
    stuck = [e for e in ended if e.final is not None and e.final > go_line and e.kind != DIVERGING]
    caught = [e for e in stuck if e.reason != COMPLETED]
    return {
        "policy": run.policy.name,
        "searcher": run.searcher,
        "trials": len(ended),
        "regret": chosen_final - best,
        "chosen": chosen_final,
        "gpu_h": sum(e.compute_s for e in ended) / 3600,
        "images_m": sum(e.samples for e in ended) / 1e6,
        "good_cut": sum(1 for e in ended if e.final is not None and e.final <= good_line and e.reason != COMPLETED),
        "learners_killed": sum(1 for e in ended if e.reason == STUCK and e.final is not None and e.final <= go_line),
        "stuck": len(stuck),
        "stuck_caught": len(caught),
        "caught_at": statistics.median(e.samples for e in caught) / settings.grace_samples if caught else math.nan,
        "learnable": sum(1 for e in ended if e.final is not None and e.final <= go_line) / max(1, len(ended)),
        "censored": sum(1 for e in ended if e.reason == CENSORED),
        "sim_h": run.sim_s / 3600,
        "real_s": run.real_s,
        "trials_per_s": len(ended) / run.real_s if run.real_s else math.inf,
        "decision_us": run.decision_s / run.decisions * 1e6 if run.decisions else math.nan,
    }


COLUMNS = (  # (key, header, format)
    ("policy", "policy", "{:<13}"),
    ("searcher", "searcher", "{:<15}"),
    ("trials", "trials", "{:>6}"),
    ("regret", "regret", "{:>6.3f}"),
    ("chosen", "chosen", "{:>6.3f}"),
    ("gpu_h", "GPU-h", "{:>7.1f}"),
    ("images_m", "Mimages", "{:>7.1f}"),
    ("good_cut", "good cut", "{:>8}"),
    ("learners_killed", "learners killed", "{:>15}"),
    ("stuck_caught", "stuck caught", "{:>12}"),
    ("caught_at", "at (graces)", "{:>11.2f}"),
    ("learnable", "learnable", "{:>9.0%}"),
    ("sim_h", "sim h", "{:>6.1f}"),
    ("real_s", "real s", "{:>6.1f}"),
    ("trials_per_s", "trials/s", "{:>8.0f}"),
)

LEGEND = (
    "regret: the chosen config's ce_ema at the budget minus the best curve's in the pool; chosen: that ce_ema; "
    "GPU-h, Mimages: compute spent; good cut: trials among the pool's best tenth stopped before the budget; "
    "learners killed: stuck_at_chance verdicts on curves that cross the Go line by the budget; stuck caught: "
    "stopped / all curves above the Go line at the budget, at (graces): median stop in grace windows; "
    "learnable: share of proposals that cross the Go line; sim h: simulated wall time."
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    header = "  ".join(fmt.replace(".3f", "").replace(".1f", "").replace(".2f", "").replace(".0%", "").replace(".0f", "").format(h) for _, h, fmt in COLUMNS)
    lines = [header]
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row[key]
            if key == "stuck_caught":
                value = f"{row['stuck_caught']}/{row['stuck']}"
                fmt = "{:>12}"
            cells.append(fmt.format(value))
        lines.append("  ".join(cells))
    return "\n".join(lines)
