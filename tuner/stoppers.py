"""The absolute chance-level rule that ASHA lacks, as a Ray Tune stopper.

ASHA ranks trials against each other: in a field of stuck trials it keeps the best of the
stuck. `ChanceLevelStopper` applies `reid_core.chance.ChanceLevelRule` (the seed team's
Go/No-Go look; the plain job applies the same rule to the same curve) to each trial's results
and keeps why it stopped each one. With an `reid_core.actions.Agreement` it also names each
stuck trial's cause as it stops it, and stops the whole search (`stop_all`) once enough stuck
trials agree on a cause no searched value fixes.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from ray.tune.stopper import Stopper

from reid_core.actions import Agreement, halt_message
from reid_core.chance import DEFAULT_CHANCE_MARGIN, ChanceLevelRule
from reid_core.diagnostics import DECLARED, UNKNOWN, stuck_cause
from reid_core.levels import go_line
from reid_core.schema import STUCK


class ChanceLevelStopper(Stopper):
    """Ray Tune stopper applying `ChanceLevelRule` per trial; keeps each stopped trial's reason (and, with
    ``agreement``, its cause), and stops every trial once the agreement decides the search cannot help."""

    def __init__(
        self,
        grace_samples: float,
        margin: float = DEFAULT_CHANCE_MARGIN,
        trend_samples: Optional[float] = None,
        keywords: Optional[Callable[[Optional[Mapping[str, Any]]], dict[str, Any]]] = None,
        agreement: Optional[Agreement] = None,
        base: Optional[Mapping[str, Any]] = None,
    ):
        """``keywords``: the rule's keywords for a trial's config (`tuner.settings.SearchSettings.rule_keywords`:
        the verdict, the budget, the early verdict's scope); none: the rule's defaults. ``agreement``: the halt
        rule (None: never stop the search); ``base``: the config a trial's sampled values go over (its cause reads
        the configured LRs and label smoothing)."""
        self._keywords = keywords  # picklable: Ray ships the stopper
        ChanceLevelRule(grace_samples, margin, trend_samples, **self._rule_keywords(None))  # validate now, in the driver
        self._grace_samples = grace_samples
        self._margin = margin
        self._trend_samples = trend_samples
        self._rules: dict[str, ChanceLevelRule] = {}
        self.reasons: dict[str, str] = {}  # trial_id -> why it was stopped (reid_core.schema.STUCK or DIVERGED)
        self.early: dict[str, Any] = {}  # trial_id -> the early verdict (reid_core.early.EarlyVerdict) that stopped it
        self.agreement = agreement
        self._base = dict(base or {})
        self._rows: dict[str, list[dict[str, float]]] = {}  # trial_id -> its results so far, while it runs (the cause reads them)
        self.causes: dict[str, str] = {}  # trial_id -> the cause named when it was stopped as stuck (with an agreement)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        rule = self._rules.get(trial_id)
        if rule is None:
            keywords = self._rule_keywords(result.get("config"))
            rule = self._rules[trial_id] = ChanceLevelRule(self._grace_samples, self._margin, self._trend_samples, **keywords)
        if self.agreement is not None:
            self._watch(trial_id, result)
        reason = rule(result)
        if reason is None:
            return False
        self.reasons[trial_id] = reason
        if rule.early is not None:
            self.early[trial_id] = rule.early
        if reason == STUCK and self.agreement is not None:
            self._name_cause(trial_id, result.get("config") or {}, rule)
        self.forget(trial_id)  # the trial is over; free its history
        return True

    def _watch(self, trial_id: str, result: Mapping[str, Any]) -> None:
        if "ce_ema" not in result:
            return
        self._rows.setdefault(trial_id, []).append({k: v for k, v in result.items() if isinstance(v, (int, float))})
        if not self.agreement.crossed and learned(result, self._margin):
            self.agreement.learned()

    def _name_cause(self, trial_id: str, sampled: Mapping[str, Any], rule: ChanceLevelRule) -> None:
        if rule.early is not None:
            cause, evidence = rule.early.cause, rule.early.evidence
        else:
            found = stuck_cause(self._rows.get(trial_id, []), self._margin, {**self._base, **sampled})
            cause, evidence = (found.cause, found.evidence) if found else (UNKNOWN, "")
        self.causes[trial_id] = cause
        self.agreement.stuck(trial_id, cause, evidence, DECLARED.get(cause, DECLARED[UNKNOWN]).fix, sampled)

    def forget(self, trial_id: str) -> None:
        """Drop what is kept of a trial that ended (the recorder calls it for trials the scheduler ended)."""
        self._rules.pop(trial_id, None)
        self._rows.pop(trial_id, None)

    def _rule_keywords(self, config: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        return self._keywords(config) if self._keywords is not None else {}

    def stop_all(self) -> bool:
        return self.agreement is not None and self.agreement.decided is not None

    def halt_line(self) -> Optional[str]:
        """The one line of a search this stopper stopped (`reid_core.actions.halt_message`), else None."""
        if self.agreement is None or self.agreement.decided is None:
            return None
        cause, trials, evidence, fix = self.agreement.decided
        return halt_message(cause, trials, evidence, fix, self.agreement.searched)


def learned(result: Mapping[str, Any], margin: float) -> bool:
    """The result is below the Go line: its trial learns (memorising does not count: an image-level CE on
    unseen images, when reported, must be below the line too)."""
    line = go_line(result["chance_ce"], margin) if "chance_ce" in result else None
    if line is None or not result["ce_ema"] <= line:
        return False
    unseen = result.get("unseen_ce")
    return not (isinstance(unseen, (int, float)) and unseen > line)
