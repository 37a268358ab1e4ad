"""The absolute chance-level rule that ASHA lacks, as a Ray Tune stopper.

ASHA ranks trials against each other: in a field of stuck trials it keeps the best of the
stuck. `ChanceLevelStopper` applies `reid_core.chance.ChanceLevelRule` (the seed team's
Go/No-Go look; the plain job applies the same rule to the same curve) to each trial's results
and keeps why it stopped each one.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from ray.tune.stopper import Stopper

from reid_core.chance import DEFAULT_CHANCE_MARGIN, ChanceLevelRule


class ChanceLevelStopper(Stopper):
    """Ray Tune stopper applying `ChanceLevelRule` per trial; keeps each stopped trial's reason."""

    def __init__(
        self,
        grace_samples: float,
        margin: float = DEFAULT_CHANCE_MARGIN,
        trend_samples: Optional[float] = None,
        keywords: Optional[Callable[[Optional[Mapping[str, Any]]], dict[str, Any]]] = None,
    ):
        """``keywords``: the rule's keywords for a trial's config (`tuner.settings.SearchSettings.rule_keywords`:
        the verdict, the budget, the early verdict's scope); none: the rule's defaults."""
        self._keywords = keywords  # picklable: Ray ships the stopper
        ChanceLevelRule(grace_samples, margin, trend_samples, **self._rule_keywords(None))  # validate now, in the driver
        self._grace_samples = grace_samples
        self._margin = margin
        self._trend_samples = trend_samples
        self._rules: dict[str, ChanceLevelRule] = {}
        self.reasons: dict[str, str] = {}  # trial_id -> why it was stopped (reid_core.schema.STUCK or DIVERGED)
        self.early: dict[str, Any] = {}  # trial_id -> the early verdict (reid_core.early.EarlyVerdict) that stopped it

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        rule = self._rules.get(trial_id)
        if rule is None:
            keywords = self._rule_keywords(result.get("config"))
            rule = self._rules[trial_id] = ChanceLevelRule(self._grace_samples, self._margin, self._trend_samples, **keywords)
        reason = rule(result)
        if reason is None:
            return False
        self.reasons[trial_id] = reason
        if rule.early is not None:
            self.early[trial_id] = rule.early
        self._rules.pop(trial_id, None)  # the trial is over; free its history
        return True

    def _rule_keywords(self, config: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        return self._keywords(config) if self._keywords is not None else {}

    def stop_all(self) -> bool:
        return False
