"""RecheckingASHA against Ray's own ASHAScheduler, fed the same results (no Ray session needed)."""

from __future__ import annotations

import math
import random
import re
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tuner.schedulers import RecheckingASHA, rung_milestones, stops_at_rung

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


def both(grace=100, max_t=1600, rf=2):
    kwargs = dict(time_attr="samples", grace_period=grace, max_t=max_t, reduction_factor=rf)
    ours, ray_asha = RecheckingASHA(**kwargs), ASHAScheduler(**kwargs)
    for scheduler in (ours, ray_asha):
        scheduler.set_search_properties("ce_ema", "min")
    return ours, ray_asha


def feed(scheduler, trial_id, samples, ce_ema):
    trial = SimpleNamespace(trial_id=trial_id)
    added = scheduler.__dict__.setdefault("_test_added", set())
    if trial_id not in added:  # as Tune does when it creates the trial
        scheduler.on_trial_add(None, trial)
        added.add(trial_id)
    return scheduler.on_trial_result(None, trial, {"samples": samples, "ce_ema": ce_ema})


@pytest.mark.parametrize("grace, max_t, rf", [(9600, 14400, 2), (9600, 76800, 2), (960, 96000, 3), (100, 100, 2)])
def test_rungs_are_the_milestones_ray_asha_builds(grace, max_t, rf):
    asha = ASHAScheduler(time_attr="samples", metric="ce_ema", mode="min", grace_period=grace, max_t=max_t, reduction_factor=rf)
    # Ray's public debug string lists its one bracket's rungs as "Iter <milestone>: <cutoff>"
    milestones = [float(m) for m in re.findall(r"Iter ([0-9.]+):", asha.debug_string())]
    assert rung_milestones(grace, max_t, rf) == sorted(milestones)


def test_a_trial_promoted_for_arriving_first_is_cut_when_better_trials_reach_its_rung():
    ours, ray_asha = both()
    # Trial "early" reaches the first rung (100) alone: both schedulers promote it.
    assert feed(ours, "early", 100, 5.0) == feed(ray_asha, "early", 100, 5.0) == CONTINUE
    # Two better trials reach that rung later.
    for tid, value in (("good", 3.0), ("better", 2.0)):
        assert feed(ours, tid, 100, value) == feed(ray_asha, tid, 100, value) == CONTINUE
    # At its next result, Ray's ASHA lets "early" go on; the re-check stops it (top half of 3: not it).
    assert feed(ray_asha, "early", 120, 4.9) == CONTINUE
    assert feed(ours, "early", 120, 4.9) == STOP
    assert ours.late_cuts == {"early"}


def test_the_best_trial_at_a_rung_is_never_cut_there():
    ours, _ = both()
    values = [4.0, 3.5, 5.0, 2.5, 4.5]
    for i, value in enumerate(values):
        feed(ours, f"t{i}", 100, value)
    assert feed(ours, "t3", 150, 2.4) == CONTINUE  # the lowest ce_ema at the rung
    assert feed(ours, "t2", 150, 4.9) == STOP


def test_a_trial_is_judged_at_its_highest_rung_only():
    ours, _ = both()
    feed(ours, "a", 100, 5.0)
    feed(ours, "a", 200, 3.0)  # alone at rung 200
    for tid in ("b", "c", "d"):
        feed(ours, tid, 100, 4.0)  # all better than a was at rung 100, none at rung 200 yet
    assert feed(ours, "a", 250, 2.9) == CONTINUE  # judged at 200, where nobody beats it


@pytest.mark.parametrize("seed", range(5))
def test_given_the_same_results_every_ray_asha_cut_is_ours_too(seed):
    rng = random.Random(seed)
    ours, ray_asha = both(grace=100, max_t=1600, rf=2)
    # 8 trials with noisy falling curves, their results interleaved at random, all fed to both
    # schedulers (their bookkeeping stays identical); compare the decisions result by result.
    curves = {f"t{i}": [6.0 - rng.uniform(0.0, 3.0) * step / 16 + rng.gauss(0, 0.05) for step in range(1, 16)] for i in range(8)}
    events = sorted((rng.random() + step, tid, step) for tid in curves for step in range(1, 16))
    decisions = [(feed(ours, tid, step * 100, curves[tid][step - 1]), feed(ray_asha, tid, step * 100, curves[tid][step - 1])) for _, tid, step in events]
    assert all(mine == STOP for mine, theirs in decisions if theirs == STOP)
    assert sum(mine == STOP for mine, _ in decisions) > sum(theirs == STOP for _, theirs in decisions)  # and more


class PlainRecheckingASHA(RecheckingASHA):
    """The re-check as first written: a percentile over every trial at the rung, at every result."""

    def decide(self, trial_id, time, value):
        rung = self._record(trial_id, time, value)
        if rung is None:
            return CONTINUE
        return STOP if stops_at_rung(rung[0].recorded, trial_id, self._quantile) else CONTINUE


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on all-NaN and infinite rungs
@pytest.mark.parametrize("seed", range(12))
def test_the_sorted_rungs_decide_exactly_as_the_plain_rule_on_random_streams(seed):
    rng = random.Random(seed)
    kwargs = dict(
        time_attr="samples", metric="ce_ema", mode=rng.choice(["min", "max"]), grace_period=100, max_t=3200,
        reduction_factor=rng.choice([2, 2.5, 3, 4]),
    )
    fast, plain = RecheckingASHA(**kwargs), PlainRecheckingASHA(**kwargs)
    # Ties, NaN and infinities included: a wrong index or a lost duplicate changes some decision.
    pick = [lambda: round(rng.uniform(0, 6), 1), lambda: rng.gauss(3, 1), lambda: math.nan, lambda: math.inf, lambda: 4.0]
    decisions = []
    for _ in range(3000):
        tid, time, value = f"t{rng.randrange(60)}", rng.randrange(0, 3300), rng.choice(pick)()
        decisions.append((fast.decide(tid, time, value), plain.decide(tid, time, value)))
    assert [a for a, _ in decisions] == [b for _, b in decisions]
    assert 20 < sum(a == STOP for a, _ in decisions) < 2980  # both answers were exercised


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="grace_period"):
        RecheckingASHA(grace_period=200, max_t=100)
    with pytest.raises(ValueError, match="reduction_factor"):
        RecheckingASHA(reduction_factor=1)
