"""Ray's OptunaSearch: the optuna objects behind it, for telling Optuna a trial was pruned (`tuner.searchers`).

Ray internals, checked against Ray 2.60.0: ``OptunaSearch._ot_study`` (the optuna Study),
``_ot_trials`` (trial id -> the optuna trial ``suggest`` asked for) and ``_completed_trials`` (trial
ids already told). Ray has no public way to tell Optuna anything but COMPLETE with the last value
(https://github.com/ray-project/ray/issues/6056 is the old form of the problem). Where any of the
three is gone, both functions answer None and `tuner.searchers.PruningOptunaSearch` tells trials as
Ray tells them (COMPLETE with their last value): the public behaviour, a worse search, no error.
"""

from __future__ import annotations

from typing import Any, Optional


def optuna_study(searcher: Any) -> Optional[Any]:
    """The optuna Study ``searcher`` (a Ray ``OptunaSearch``) proposes from; None before its space is set."""
    return getattr(searcher, "_ot_study", None)


def optuna_handles(searcher: Any, trial_id: str) -> Optional[tuple[Any, Any, set]]:
    """``(study, optuna trial, told trial ids)`` for ``trial_id``, or None where Ray's internals differ.

    The told set is Ray's own: a trial added to it is one Ray will not tell again.
    """
    study = optuna_study(searcher)
    trials = getattr(searcher, "_ot_trials", None)
    told = getattr(searcher, "_completed_trials", None)
    if study is None or not isinstance(trials, dict) or not isinstance(told, set) or trial_id not in trials:
        return None
    return study, trials[trial_id], told
