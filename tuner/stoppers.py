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
from reid_core.repair import FIXABLE, fix_for
from reid_core.schema import STUCK
from tuner.repairs import BOOKS

HALTS: dict[str, str] = {}  # experiment path -> the halt line of the search that stopped itself, in this driver
# experiment path -> the stopper Ray runs. On --resume Ray runs the stopper of its last saved experiment state
# (TuneController's runner_data), not the one the callbacks were pickled with (tuner.pkl): the callbacks that read
# why a trial stopped find the live one here.
LIVE: dict[str, "ChanceLevelStopper"] = {}


def live(stopper: "ChanceLevelStopper", key: str) -> "ChanceLevelStopper":
    """The stopper Ray runs for the experiment at ``key`` (``stopper`` itself before it has judged a result)."""
    return LIVE.get(key, stopper)


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
        key: Optional[str] = None,
        repairs: bool = False,
        bounds: Optional[Mapping[str, tuple[float, float]]] = None,
    ):
        """``keywords``: the rule's keywords for a trial's config (`tuner.settings.SearchSettings.rule_keywords`:
        the verdict, the budget, the early verdict's scope); none: the rule's defaults. ``agreement``: the halt
        rule (None: never stop the search); ``base``: the config a trial's sampled values go over (its cause reads
        the configured LRs and label smoothing); ``key``: the experiment's path, under which the stopper finds the
        search's `tuner.repairs.RepairBook` (`tuner.repairs.BOOKS`) and leaves its halt line (`HALTS`): Ray pickles
        the stopper with the experiment and a resumed search runs the unpickled copy, not the driver's new one;
        ``repairs``: tell the book the sized fix (`reid_core.repair.fix_for`, within ``bounds``: the searched ranges) of each
        trial stopped for a cause with one."""
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
        self.key, self.repairs = key, repairs
        self._bounds = dict(bounds or {})
        self._learned_lrs: list[float] = []  # head LRs of trials that crossed the Go line (a repair's floor)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        key = getattr(self, "key", None)  # a stopper pickled before 0.6 has none
        if key is not None and LIVE.get(key) is not self:
            LIVE[key] = self
        rule = self._rules.get(trial_id)
        if rule is None:
            keywords = self._rule_keywords(result.get("config"))
            rule = self._rules[trial_id] = ChanceLevelRule(self._grace_samples, self._margin, self._trend_samples, **keywords)
        if self._names_causes:
            self._watch(trial_id, result)
        reason = rule(result)
        if reason is None:
            return False
        self.reasons[trial_id] = reason
        if rule.early is not None:
            self.early[trial_id] = rule.early
        if reason == STUCK and self._names_causes:
            self._name_cause(trial_id, result, rule)
        self.forget(trial_id)  # the trial is over; free its history
        return True

    @property
    def _names_causes(self) -> bool:
        return self.agreement is not None or getattr(self, "repairs", False)  # getattr: a stopper pickled before

    def _watch(self, trial_id: str, result: Mapping[str, Any]) -> None:
        if "ce_ema" not in result:
            return
        rows = self._rows.setdefault(trial_id, [])
        if rows and rows[-1].get("step") == result.get("step"):
            return  # a learned trial is remembered once
        rows.append({k: v for k, v in result.items() if isinstance(v, (int, float))})
        if learned(result, self._margin) and (len(rows) < 2 or not learned(rows[-2], self._margin)):
            if self.agreement is not None:
                self.agreement.learned()
            head_lr = {**self._base, **(result.get("config") or {})}.get("head_lr")
            if isinstance(head_lr, (int, float)):
                self._learned_lrs.append(float(head_lr))

    def _name_cause(self, trial_id: str, result: Mapping[str, Any], rule: ChanceLevelRule) -> None:
        sampled = dict(result.get("config") or {})
        config, rows = {**self._base, **sampled}, self._rows.get(trial_id, [])
        if rule.early is not None:
            cause, evidence = rule.early.cause, rule.early.evidence
        else:
            found = stuck_cause(rows, self._margin, config)
            cause, evidence = (found.cause, found.evidence) if found else (UNKNOWN, "")
        self.causes[trial_id] = cause
        if self.agreement is not None:
            self.agreement.stuck(trial_id, cause, evidence, DECLARED.get(cause, DECLARED[UNKNOWN]).fix, sampled)
        book = BOOKS.get(self.key) if self.repairs else None
        if book is not None and cause in FIXABLE:
            per_step = result["samples"] / max(result["step"], 1)
            fix = fix_for(cause, rows, config, self._grace_samples / per_step, self._bounds, self._learned_lrs)
            if fix is not None:
                book.decide(trial_id, fix, sampled)

    def forget(self, trial_id: str) -> None:
        """Drop what is kept of a trial that ended (the recorder calls it for trials the scheduler ended)."""
        self._rules.pop(trial_id, None)
        self._rows.pop(trial_id, None)

    def _rule_keywords(self, config: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        return self._keywords(config) if self._keywords is not None else {}

    def stop_all(self) -> bool:
        if self.agreement is None or self.agreement.decided is None:
            return False
        if getattr(self, "key", None):
            HALTS[self.key] = self.halt_line()  # for the driver's summary, whichever copy of the stopper Ray runs
        return True

    def halt_line(self) -> Optional[str]:
        """The one line of a search this stopper stopped (`reid_core.actions.halt_message`), else None."""
        if self.agreement is None or self.agreement.decided is None:
            return None
        cause, trials, evidence, fix = self.agreement.decided
        return halt_message(cause, trials, evidence, fix, self.agreement.searched)


def learned(result: Mapping[str, Any], margin: float) -> bool:
    """The result is below the Go line: its trial learns. Memorising does not count: when the run reports the CE on
    held-out images (``unseen_ce``), that must be below the line too (NaN, not measured yet: not yet)."""
    line = go_line(result["chance_ce"], margin) if "chance_ce" in result else None
    if line is None or not result["ce_ema"] <= line:
        return False
    if "unseen_ce" not in result:  # a user's loop that does not measure it: the training CE is all there is
        return True
    unseen = result["unseen_ce"]
    return isinstance(unseen, (int, float)) and unseen <= line  # NaN compares False
