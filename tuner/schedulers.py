"""ASHA whose promotions are re-checked as more trials reach a rung.

Ray's ``ASHAScheduler`` decides at a rung once, when the trial gets there, against
the trials recorded there *so far*. The first trial to reach a rung has no one to
be compared with and always goes on; the second goes on if it beats the first.
With the hundreds of trials ASHA was designed for that costs little; with the
8-10 trials of a search on one machine, the first two trials started are the
first to reach every rung, and run to the budget whatever their quality
(``benchmarks/early_stop.py``: three of ten trials ran the whole budget, two of
them only because they started first).

`RecheckingASHA` makes the same decisions as Ray's ASHA (same rungs, same
cutoff) and, at every later result of a trial, repeats the decision at the
highest rung the trial has reached, against every trial recorded there by then.
A trial promoted because it arrived early stops as soon as enough better trials
have reached that rung that it would not have been promoted among them: the cut
synchronous successive halving would have made, made as soon as the evidence
is in. The best trial at a rung is never cut at that rung.

A rung keeps its values sorted as trials arrive (one insertion per trial per
rung), so a decision reads the cutoff by index instead of recomputing a
percentile over every trial at the rung: its cost does not grow with the
number of trials (``benchmarks/simulation_scale.py`` prints it at 100 and 10,000).
`stops_at_rung` is the rule written plainly, the specification the bookkeeping
is tested against.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from ray.tune.result import DEFAULT_METRIC
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


def rung_milestones(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """Rung milestones ``grace * rf**k`` up to ``max_t``, ascending (the ones Ray's ASHAScheduler builds)."""
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(rungs)]


def stops_at_rung(recorded: dict[str, float], trial_id: str, quantile: float) -> bool:
    """The re-check in its plain form: ``trial_id``'s value at a rung (signed, higher is better) is below the
    ``quantile`` percentile of the other trials' values there (NaN ignored; Ray's ASHA cutoff). O(trials)."""
    others = [v for tid, v in recorded.items() if tid != trial_id]
    if not others or all(math.isnan(v) for v in others):
        return False
    return recorded[trial_id] < float(np.nanpercentile(others, quantile))


def _linear_percentile(ordered: list[float], skip: int, quantile: float) -> float:
    """``np.nanpercentile(ordered without ordered[skip], quantile)`` for a sorted NaN-free list, in O(1).

    The same arithmetic as numpy's default (linear) method, step by step, so the result is the same
    float: virtual index ``(n - 1) * q``, and numpy's two-sided lerp."""
    n = len(ordered) - 1

    def at(i: int) -> float:
        return ordered[i if i < skip else i + 1]

    index = (n - 1) * (quantile / 100)
    if index >= n - 1:  # numpy then interpolates the last value with itself: an infinity becomes NaN
        last = at(n - 1)
        return last if math.isfinite(last) else math.nan
    below = math.floor(index)
    gamma = index - below
    a, b = at(below), at(below + 1)
    diff = b - a  # an infinity makes NaN here too, as in numpy
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


class _Rung:
    """One rung: each trial's value at its first result past the milestone, and the non-NaN values sorted."""

    __slots__ = ("milestone", "recorded", "ordered")

    def __init__(self, milestone: float):
        self.milestone = milestone
        self.recorded: dict[str, float] = {}  # trial_id -> signed value (higher is better)
        self.ordered: list[float] = []  # the non-NaN values of `recorded`, ascending

    def add(self, trial_id: str, value: float) -> None:
        self.recorded[trial_id] = value
        if not math.isnan(value):
            insort(self.ordered, value)

    def stops(self, trial_id: str, quantile: float) -> bool:
        """`stops_at_rung` from the sorted values: the trial's own value left out by its index."""
        value = self.recorded[trial_id]
        if math.isnan(value):  # NaN < cutoff is False whatever the cutoff
            return False
        if len(self.ordered) < 2:  # no other trial with a value
            return False
        return value < _linear_percentile(self.ordered, bisect_left(self.ordered, value), quantile)


class RecheckingASHA(FIFOScheduler):
    """Asynchronous successive halving (one bracket) whose promotions are re-checked.

    Args:
        time_attr: the result's time axis (here ``samples``: images seen).
        metric, mode: what is ranked; usually left to ``tune.TuneConfig``.
        max_t: a trial stops when ``time_attr`` reaches it.
        grace_period: the first rung.
        reduction_factor: rungs every ``reduction_factor`` times the last; a rung keeps the top
            ``1 / reduction_factor`` of the trials recorded at it.
    """

    def __init__(
        self,
        time_attr: str = "training_iteration",
        metric: Optional[str] = None,
        mode: Optional[str] = None,
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 4,
    ):
        if not 0 < grace_period <= max_t:
            raise ValueError(f"grace_period is {grace_period} and max_t {max_t}, but must be 0 < grace_period <= max_t")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor is {reduction_factor}, but must be > 1")
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode is {mode!r}, but must be 'min' or 'max'")
        super().__init__()
        self._time_attr = time_attr
        self._metric = metric
        self._mode = mode
        self._max_t = max_t
        self._quantile = (1 - 1 / reduction_factor) * 100
        # highest milestone first; values signed so that higher is better
        self._rungs = [_Rung(m) for m in reversed(rung_milestones(grace_period, max_t, reduction_factor))]
        self.late_cuts: set[str] = set()  # trials stopped by a re-check, not on arriving at a rung

    @property
    def metric(self) -> Optional[str]:
        """What is ranked (Ray's ``TrialScheduler.metric``, read by its check that results carry it).

        Ours, not read from ``TrialScheduler._metric``: ``_metric`` and ``_mode`` here are this class's own
        (``set_search_properties`` is overridden too), under the names earlier versions pickled with an
        experiment, so that ``--resume`` of one still loads."""
        return self._metric

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        if self._metric is None and self._mode:
            self._metric = DEFAULT_METRIC
        return True

    def on_trial_add(self, tune_controller: Any, trial: "Trial") -> None:
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(
                f"{type(self).__name__} has no metric ({self._metric}) or mode ({self._mode}): pass them "
                "here or to tune.TuneConfig()"
            )

    def on_trial_result(self, tune_controller: Any, trial: "Trial", result: dict[str, Any]) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        if result[self._time_attr] >= self._max_t:
            return TrialScheduler.STOP
        return self.decide(trial.trial_id, result[self._time_attr], result[self._metric])

    def on_trial_complete(self, tune_controller: Any, trial: "Trial", result: dict[str, Any]) -> None:
        if result and self._time_attr in result and self._metric in result:
            self._record(trial.trial_id, result[self._time_attr], result[self._metric])

    def decide(self, trial_id: str, time: float, value: float) -> str:
        """CONTINUE or STOP for one result of one trial (the scheduler without Ray's trial objects)."""
        rung = self._record(trial_id, time, value)
        if rung is None:
            return TrialScheduler.CONTINUE
        at, arrived = rung
        if at.stops(trial_id, self._quantile):
            if not arrived:
                self.late_cuts.add(trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _record(self, trial_id: str, time: float, value: float) -> Optional[tuple[_Rung, bool]]:
        """The highest rung ``time`` has passed (None before the first), and whether this result is the
        trial's arrival there: its value is recorded from its first result past the milestone (Ray's rule)."""
        for rung in self._rungs:
            if time >= rung.milestone:
                arrived = trial_id not in rung.recorded
                if arrived:
                    rung.add(trial_id, (1.0 if self._mode == "max" else -1.0) * float(value))
                return rung, arrived
        return None

    def debug_string(self) -> str:
        rungs = ", ".join(f"{r.milestone:g}: {len(r.recorded)} trials" for r in reversed(self._rungs))
        return f"RecheckingASHA: {rungs}; {len(self.late_cuts)} late cuts"
