"""PruningOptunaSearch: a trial stopped before its budget reaches Optuna as pruned, not as completed (no Ray session)."""

from __future__ import annotations

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from tuner._ray_compat import optuna_study
from tuner.searchers import PruningOptunaSearch

SPACE = {"head_lr": tune.loguniform(1e-6, 1e-1)}
BUDGET = 4800
PRUNED, COMPLETE, FAIL = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def told(searcher) -> list:
    searcher.set_search_properties(None, None, SPACE)
    for tid in ("full", "cut", "crashed"):
        searcher.suggest(tid)
        searcher.on_trial_result(tid, {"samples": 100, "ce_ema": 5.9, "training_iteration": 1})
    searcher.on_trial_complete("full", {"samples": BUDGET, "ce_ema": 0.2, "training_iteration": 150})
    searcher.on_trial_complete("cut", {"samples": 1920, "ce_ema": 5.1, "training_iteration": 60})
    searcher.on_trial_complete("crashed", None, error=True)
    return optuna_study(searcher).trials


def test_an_early_stopped_trial_is_pruned_with_its_value_at_the_images_it_had_seen():
    full, cut, crashed = told(PruningOptunaSearch(metric="ce_ema", mode="min", seed=0, budget_attr="samples", max_budget=BUDGET))
    assert (full.state, full.value) == (COMPLETE, 0.2)
    assert cut.state == PRUNED and cut.intermediate_values == {1920: 5.1}
    assert crashed.state == FAIL


def test_rays_optuna_search_tells_the_same_trial_completed_with_its_low_budget_value():
    _, cut, _ = told(OptunaSearch(metric="ce_ema", mode="min", seed=0))
    assert (cut.state, cut.value) == (COMPLETE, 5.1)  # what PruningOptunaSearch corrects


def test_where_rays_internals_are_gone_the_trial_is_told_as_ray_tells_it(monkeypatch):
    import tuner.searchers

    monkeypatch.setattr(tuner.searchers, "optuna_handles", lambda searcher, trial_id: None)  # what the fence answers then
    _, cut, _ = told(PruningOptunaSearch(metric="ce_ema", mode="min", seed=0, budget_attr="samples", max_budget=BUDGET))
    assert cut.state == COMPLETE


def test_with_report_every_the_curve_is_reported_thinned_and_ends_where_the_trial_did():
    searcher = PruningOptunaSearch(metric="ce_ema", mode="min", seed=0, budget_attr="samples", max_budget=BUDGET, report_every=320)
    searcher.set_search_properties(None, None, SPACE)
    for tid in ("full", "cut"):
        searcher.suggest(tid)
    for step in range(1, 151):  # batch 32: 150 steps to the budget; "cut" stopped at 60, then restarted once (a retry)
        searcher.on_trial_result("full", {"samples": 32 * step, "ce_ema": 6 - step / 30})
    for step in [*range(1, 41), *range(1, 61)]:
        searcher.on_trial_result("cut", {"samples": 32 * step, "ce_ema": 6 - step / 100})
    searcher.on_trial_complete("full", {"samples": BUDGET, "ce_ema": 1.0})
    searcher.on_trial_complete("cut", {"samples": 1920, "ce_ema": 5.4})
    full, cut = optuna_study(searcher).trials
    assert sorted(full.intermediate_values) == [*range(32, BUDGET, 320), BUDGET] and full.intermediate_values[BUDGET] == 1.0
    assert (full.state, full.value) == (COMPLETE, 1.0)
    assert sorted(cut.intermediate_values) == [*range(32, 1920, 320), 1920] and cut.state == PRUNED
    assert cut.intermediate_values[352] == 6 - 11 / 100  # the first run's value: the retry's same steps not written again
