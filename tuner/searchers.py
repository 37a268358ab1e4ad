"""Ray's OptunaSearch, told which trials were stopped before their budget.

Ray 2.60's ``OptunaSearch.on_trial_complete`` tells Optuna that every trial with
a last result is COMPLETE with that value. A trial that ASHA or the chance-level
rule stopped at an eighth of its budget then reaches TPE as if its low-budget
``ce_ema`` were a final one, ranked among the values of trials that ran the
whole budget (https://github.com/ray-project/ray/issues/6056 is the old form).

`PruningOptunaSearch` tells Optuna the truth: a trial whose last result is
short of the budget is PRUNED, with that result as its intermediate value at
the images it had seen. TPE then ranks it as it ranks the trials of Optuna's
own pruners (``optuna.samplers._tpe.sampler._get_pruned_trial_score``): after
the completed trials, by how far it got, then by its value. Completed and
failed trials are told as Ray tells them.

Ray also reports every result to Optuna (``trial.report`` at each
``training_iteration``): one storage write per result in the driver, while
TPE reads only a pruned trial's last intermediate value. Here the value is
reported once, when the trial ends, at the trial's budget in images, so trials
with different accumulation are ranked at equal compute.

With ``report_every`` (``--optuna-storage``: the study is in a database that ``optuna-dashboard``
watches, `tuner.optuna_storage`), a trial's metric is also reported as it trains, against the images
seen, once per ``report_every`` images: each report is a database write in the driver, so they are
thinned, and the dashboard still draws the curves.

The optuna study and trials behind Ray's searcher come from `tuner._ray_compat.optuna_search`
(Ray's private attributes; where they differ, trials are told as Ray tells them).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

from ray.tune.search.optuna import OptunaSearch

from tuner._ray_compat import optuna_handles, optuna_study

logger = logging.getLogger(__name__)


class PruningOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a trial stopped before ``max_budget`` (in ``budget_attr``) was pruned.

    Args:
        budget_attr: the results' time axis, as the scheduler's (here ``samples``: images seen).
        max_budget: a trial whose last result reached it completed; one short of it was stopped early.
        report_every: report the metric as an intermediate value every that many of ``budget_attr`` (0: only
            when a trial stopped early ends, as TPE needs).
        *args, **kwargs: as ``OptunaSearch`` (``storage``, ``study_name``: where the study is kept).
    """

    def __init__(self, *args: Any, budget_attr: str = "samples", max_budget: float, report_every: float = 0, **kwargs: Any):
        if not max_budget > 0:
            raise ValueError(f"The value of `max_budget` is {max_budget}, but must be `max_budget > 0`.")
        if report_every < 0:
            raise ValueError(f"The value of `report_every` is {report_every}, but must be `report_every >= 0`.")
        super().__init__(*args, **kwargs)
        self._budget_attr = budget_attr
        self._max_budget = max_budget
        self._report_every = report_every
        self.reported: dict[str, float] = {}  # trial id -> the budget of its last intermediate value
        self.pruned: set[str] = set()  # trials told as pruned

    @property
    def study(self) -> Any:
        """The optuna Study the proposals come from (None before the search space is set)."""
        return optuna_study(self)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Every ``report_every`` images, the metric as an intermediate value (with none, nothing: the value
        TPE needs is reported when the trial ends; see the module's docstring)."""
        if not self._report_every:
            return
        budget, value = result.get(self._budget_attr), result.get(self.metric) if isinstance(self.metric, str) else None
        last = self.reported.get(trial_id)
        if budget is None or value is None or (last is not None and budget < last + self._report_every):
            return  # a restarted trial (a retry, --resume) reports again from where its curve was left
        self._report(trial_id, value, budget)

    def _report(self, trial_id: str, value: Any, budget: float) -> None:
        handles = optuna_handles(self, trial_id)
        if handles is None or trial_id in handles[2] or self.reported.get(trial_id) == budget:
            return  # Ray's internals differ, the trial was told, or this budget is reported already
        value = float(value)
        # A non-finite value (a diverged trial) is reported as NaN: TPE ranks it last among trials as far.
        handles[1].report(value if math.isfinite(value) else math.nan, step=int(budget))
        self.reported[trial_id] = budget

    def on_trial_complete(self, trial_id: str, result: Optional[dict[str, Any]] = None, error: bool = False) -> None:
        budget = (result or {}).get(self._budget_attr)
        value = (result or {}).get(self.metric) if isinstance(self.metric, str) else None
        if error or budget is None or value is None or budget >= self._max_budget:
            if self._report_every and budget is not None and value is not None:
                self._report(trial_id, value, budget)  # the curve ends where the trial did
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        handles = optuna_handles(self, trial_id)
        if handles is None:  # Ray's internals differ (tuner._ray_compat.optuna_search): told as Ray tells it
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        study, ot_trial, told = handles
        if trial_id in told:
            return
        import optuna

        self._report(trial_id, value, budget)
        try:
            study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        except Exception as err:  # as Ray does: a tell that fails must not end the search
            logger.warning(err)
        told.add(trial_id)
        self.pruned.add(trial_id)
