"""The absolute chance-level rule that ASHA lacks.

ASHA ranks trials against each other: in a field of stuck trials it keeps the
best of the stuck. `ChanceLevelStopper` adds the seed team's Go/No-Go look as
an absolute rule:

* any time: a non-finite ``ce`` or ``ce_ema`` stops the trial as ``diverged``;
* before the grace window (``grace_samples`` images seen): no verdict;
* after it: a trial whose ``ce_ema`` is at or below the Go line
  ``chance_ce - margin`` (5.6 for 400 identities) goes on;
* a trial above the line goes on only while it is *clearly falling*: at the
  rate ``ce_ema`` fell over the last ``trend_samples`` images, it would reach
  the Go line within another grace window. A flat trial near chance stops as
  ``stuck_at_chance`` at the first report past the grace window; a slow learner
  (head LR 1.5e-4 here: ce_ema 5.79 and falling at the window) is left to ASHA,
  and stopped later if its fall slows before it reaches the line.

The chance level is read from each result's ``chance_ce`` (log C), so one
stopper serves data sets with any number of identities.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Optional

from ray.tune.stopper import Stopper

STUCK, DIVERGED = "stuck_at_chance", "diverged"


class ChanceLevelRule:
    """The rule on one trial's stream of results, without Ray: feed results, read the verdict."""

    def __init__(self, grace_samples: float, margin: float = 0.39, trend_samples: Optional[float] = None):
        if not grace_samples > 0:
            raise ValueError(f"The value of `grace_samples` is {grace_samples}, but must be `grace_samples > 0`.")
        if not margin > 0:
            raise ValueError(f"The value of `margin` is {margin}, but must be `margin > 0`.")
        trend_samples = grace_samples / 2 if trend_samples is None else trend_samples
        if not 0 < trend_samples <= grace_samples:
            raise ValueError(
                f"The value of `trend_samples` is {trend_samples}, but must be `0 < trend_samples <= grace_samples`."
            )
        self.grace_samples = grace_samples
        self.margin = margin
        self.trend_samples = trend_samples
        self._history: deque[tuple[float, float]] = deque()  # (samples, ce_ema) over the trend window

    def __call__(self, result: dict[str, Any]) -> Optional[str]:
        """Return ``None`` to go on, or the reason to stop: ``stuck_at_chance`` or ``diverged``."""
        ce, ce_ema = result.get("ce"), result.get("ce_ema")
        if ce is None or ce_ema is None:  # not a training step (e.g. a result without metrics)
            return None
        # NaN or inf loss: nothing will recover it.
        if not (math.isfinite(ce) and math.isfinite(ce_ema)):
            return DIVERGED
        samples = float(result["samples"])
        self._remember(samples, ce_ema)
        # Too early to judge: the seed's smoke window has not passed.
        if samples < self.grace_samples:
            return None
        # Below the Go line: learning.
        gap = ce_ema - (result["chance_ce"] - self.margin)
        if gap <= 0:
            return None
        # Above the line but falling fast enough to cross it within another grace window: a slow learner.
        then_samples, then_ce_ema = self._history[0]
        drop_per_sample = (then_ce_ema - ce_ema) / max(samples - then_samples, 1.0)
        if drop_per_sample > 0 and gap / drop_per_sample <= self.grace_samples:
            return None
        # Above the line and flat (or rising): stuck at chance.
        return STUCK

    def _remember(self, samples: float, ce_ema: float) -> None:
        self._history.append((samples, ce_ema))
        # Keep the newest point at least trend_samples old as the trend's reference.
        while len(self._history) > 1 and samples - self._history[1][0] >= self.trend_samples:
            self._history.popleft()


class ChanceLevelStopper(Stopper):
    """Ray Tune stopper applying `ChanceLevelRule` per trial; keeps each stopped trial's reason."""

    def __init__(self, grace_samples: float, margin: float = 0.39, trend_samples: Optional[float] = None):
        ChanceLevelRule(grace_samples, margin, trend_samples)  # validate now, in the driver
        self._grace_samples = grace_samples
        self._margin = margin
        self._trend_samples = trend_samples
        self._rules: dict[str, ChanceLevelRule] = {}
        self.reasons: dict[str, str] = {}  # trial_id -> why it was stopped

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        rule = self._rules.get(trial_id)
        if rule is None:
            rule = self._rules[trial_id] = ChanceLevelRule(self._grace_samples, self._margin, self._trend_samples)
        reason = rule(result)
        if reason is None:
            return False
        self.reasons[trial_id] = reason
        self._rules.pop(trial_id, None)  # the trial is over; free its history
        return True

    def stop_all(self) -> bool:
        return False
