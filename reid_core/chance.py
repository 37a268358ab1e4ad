"""The chance-level rule: the seed team's Go/No-Go look, one implementation for the plain job and the search.

The seed's rule has two halves: by steps 200-300, CE <= 5.6 (for 400 identities) AND a clear
downward trend. `ChanceLevelRule` reads a run's results one at a time:

* any time: a non-finite ``ce``, ``ce_ema`` or ``loss`` ends the run as ``diverged`` (`reid_core.ending.diverged`);
* before the grace window (``grace_samples`` images seen): only the early verdict (below);
* after it: a run whose ``ce_ema`` is at or below the Go line ``chance_ce - margin`` goes on;
* a run above the line goes on only while it is *clearly falling*: at the rate ``ce_ema`` fell
  over the last ``trend_samples`` images, it would reach the Go line within another grace
  window. A flat run near chance stops as ``stuck_at_chance`` at the first result past the
  window; a slow learner (head LR 1.5e-4 on the random-init default: ce_ema 5.79 and falling at
  the window) goes on, and is stopped later only if its fall slows before it reaches the line;
* before the window, the early verdict (`reid_core.early`): at each new head measurement, a run whose head
  statistics say it cannot reach the Go line by its budget (a wiring fault; a head whose movement or logit
  spread, projected to the budget, falls short) stops as ``stuck_at_chance`` at once, the cause and evidence
  kept in ``rule.early``. A curve without head metrics gets none. ``verdict="window"`` turns it off (the
  seed's Go/No-Go exactly);
* a run at or below the Go line that reports ``unseen_ce`` (the CE on held-out images it never trains on,
  `reid_core.unseen`) is learning only if that CE has left chance too: past the window, a run whose ``ce_ema``
  is `reid_core.causes.MEMORISED_GAP` below its ``unseen_ce`` (now and when it was measured) while ``unseen_ce`` has
  never been below the Go line (`reid_core.causes.memorising`) stops as ``stuck_at_chance`` (cause
  ``labels_memorised``): it memorises its images and learns nothing that carries to another image of the same
  person; before the window the early verdict may say so (calibrated runs). The other way round, a run above the
  line whose latest ``unseen_ce`` is at or below it is learning (what it learns carries to new images): not stopped;
* a run that changes its own head LR (the counts ``head_guard_firings`` or ``head_lr_raises``
  grow, `reid_core.head_lr`) starts a new grace window there, its trend forgotten: it is judged on
  the LR it now trains at, not stopped for the flat curve that made the raise.

The chance level is read from each result's ``chance_ce`` (log C), so one rule serves data sets
with any number of identities. No torch, no Ray: `tuner.stoppers.ChanceLevelStopper` applies it
per trial inside Ray Tune, `reid_core.runner.RunWriter` in the plain run, `tuner.results` when it
replays a recorded curve, the simulator on curves it replays.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from typing import Any, Iterable, Optional

from reid_core.causes import memorising
from reid_core.early import EarlyJudge, EarlyVerdict, Scope
from reid_core.evidence import unseen_trace
from reid_core.ending import diverged
from reid_core.levels import DEFAULT_CHANCE_MARGIN, DEFAULT_GRACE_STEPS, go_line  # noqa: F401  (importable from here)
from reid_core.schema import DIVERGED, HEAD_LR_COUNTS, STUCK

EARLY, WINDOW = VERDICTS = ("early", "window")  # when the rule may say stuck: from the evidence, or at the window only


class ChanceLevelRule:
    """The rule on one run's stream of results: feed results in order, read the verdict."""

    # class defaults too: a rule pickled before head-LR changes existed (a restored search) unpickles with them
    _grace_start = 0.0
    _lr_changes = 0
    _judge: Optional[EarlyJudge] = None
    _head_rows: list = []
    _unseen: Optional[list] = None
    _trace: Optional[tuple[float, float, float]] = None
    early: Optional[EarlyVerdict] = None  # the early verdict's cause and evidence, when it stopped the run

    def __init__(
        self,
        grace_samples: float,
        margin: float = DEFAULT_CHANCE_MARGIN,
        trend_samples: Optional[float] = None,
        *,
        verdict: str = EARLY,
        budget_samples: Optional[float] = None,
        scope: Scope = Scope(),
    ):
        """``verdict``: `EARLY` (the early verdict, then the window) or `WINDOW`; ``budget_samples``: the images the
        run will see (the early LR projection needs it); ``scope``: what the early verdict may read of this run
        (`reid_core.early.scope` of its config)."""
        if not grace_samples > 0:
            raise ValueError(f"The value of `grace_samples` is {grace_samples}, but must be `grace_samples > 0`.")
        if not margin > 0:
            raise ValueError(f"The value of `margin` is {margin}, but must be `margin > 0`.")
        trend_samples = grace_samples / 2 if trend_samples is None else trend_samples
        if not 0 < trend_samples <= grace_samples:
            raise ValueError(
                f"The value of `trend_samples` is {trend_samples}, but must be `0 < trend_samples <= grace_samples`."
            )
        if verdict not in VERDICTS:
            raise ValueError(f"The value of `verdict` is {verdict!r}, but must be one of {VERDICTS}.")
        self.grace_samples = grace_samples
        self.margin = margin
        self.verdict = verdict
        self._judge = EarlyJudge(margin, budget_samples, scope) if verdict == EARLY else None
        self._head_rows = []  # the rows with head metrics since the grace window began (the early judge's)
        self.early = None
        self.trend_samples = trend_samples
        self._grace_start = 0.0  # samples at which the current grace window began (a head-LR change restarts it)
        self._lr_changes = 0  # head_guard_firings + head_lr_raises at the last result
        # every result so far, samples ascending (a restore may go back to any of them): (samples, ce_ema), and
        # (_lr_changes, _grace_start) as they stood after it
        self._samples: list[float] = []
        self._ce_emas: list[float] = []
        self._states: list[tuple[int, float]] = []
        self._unseen: Optional[list[float]] = []  # unseen_ce of each result (NaN where not reported)
        self._trace: Optional[tuple[float, float, float]] = None  # unseen_trace of them, kept up to date (None: to compute)

    def __call__(self, result: dict[str, Any]) -> Optional[str]:
        """Return ``None`` to go on, or the reason to stop: ``stuck_at_chance`` or ``diverged``."""
        ce, ce_ema = result.get("ce"), result.get("ce_ema")
        if ce is None or ce_ema is None:  # not a training step (e.g. a result without metrics)
            return None
        # NaN or inf loss: nothing will recover it.
        if diverged(result):
            return DIVERGED
        samples = float(result["samples"])
        self._rewind(samples)
        # The run changed its own head LR (guard or raise): a new grace window from here, on the new LR's curve.
        lr_changes = sum(v for v in map(result.get, HEAD_LR_COUNTS) if isinstance(v, (int, float)) and math.isfinite(v))
        if lr_changes != self._lr_changes:  # the trend forgets what came before (`_reference`)
            self._lr_changes, self._grace_start = lr_changes, samples
        self._remember(samples, ce_ema, result.get("unseen_ce"))
        if samples - self._grace_start < self.grace_samples:
            # Before the seed's smoke window (since the start, or the last head-LR change) has passed: only a
            # confident early verdict, judged at each new head measurement.
            return self._judge_early(result)
        # Below the Go line: learning, unless the CE on images it never trained on stayed at chance (memorising).
        line = go_line(result["chance_ce"], self.margin)
        gap = ce_ema - line
        unseen_now, unseen_best, ce_ema_at_unseen = self._unseen_trace()
        if gap <= 0:
            return STUCK if memorising(ce_ema, unseen_now, unseen_best, ce_ema_at_unseen, line) else None
        # Above the line on its training images but at or below it on held-out ones: what it learns carries over.
        if unseen_now <= line:
            return None
        # Above the line but falling fast enough to cross it within another grace window: a slow learner.
        then_samples, then_ce_ema = self._reference(samples)
        drop_per_sample = (then_ce_ema - ce_ema) / max(samples - then_samples, 1.0)
        if drop_per_sample > 0 and gap / drop_per_sample <= self.grace_samples:
            return None
        # Above the line and flat (or rising): stuck at chance.
        return STUCK

    def _judge_early(self, result: dict[str, Any]) -> Optional[str]:
        if self._judge is None or "head_grad_norm" not in result:
            return None
        rows = self._head_rows
        while rows and rows[0]["samples"] < self._grace_start:  # a head-LR change: judge the new LR's rows only
            rows.pop(0)
        rows.append({k: v for k, v in result.items() if isinstance(v, (int, float))})
        if result.get("head_measured_step", result["step"]) != result["step"]:
            return None  # between measurements the head statistics repeat: nothing new to judge
        self.early = self._judge.judge(rows)
        return STUCK if self.early is not None else None

    def _rewind(self, samples: float) -> None:
        """A run restored from an earlier checkpoint (a retry; PBT's exploit) reports images seen again: the rule
        forgets what came after the restore point, as the tables' reading of the curve does, so the live verdict
        and the replayed one agree. (Hence the whole history, not only the trend window: ~80 bytes a step.)"""
        cut = bisect_left(self._samples, samples)
        if self._head_rows and self._head_rows[-1]["samples"] >= samples:
            self._head_rows = [r for r in self._head_rows if r["samples"] < samples]
        if cut < len(self._samples):
            del self._samples[cut:], self._ce_emas[cut:], self._states[cut:], self._unseen_values()[cut:]
            self._trace = None  # recomputed from what is left
            self._lr_changes, self._grace_start = self._states[-1] if self._states else (0, 0.0)

    def _remember(self, samples: float, ce_ema: float, unseen: Any) -> None:
        unseen = unseen if isinstance(unseen, (int, float)) and not isinstance(unseen, bool) else math.nan
        trace = self._unseen_trace()
        if math.isfinite(unseen) and unseen != trace[0]:  # a new measurement (a repeated one keeps its first ce_ema)
            self._trace = (unseen, min(unseen, trace[1]) if math.isfinite(trace[1]) else unseen, ce_ema)
        self._unseen_values().append(unseen)
        self._samples.append(samples)
        self._ce_emas.append(ce_ema)
        self._states.append((self._lr_changes, self._grace_start))

    def _unseen_trace(self) -> tuple[float, float, float]:
        """`reid_core.evidence.unseen_trace` of the results so far, updated per result (not rescanned: a long run)."""
        if self._trace is None:
            self._trace = unseen_trace(self._ce_emas, self._unseen_values())
        return self._trace

    def _unseen_values(self) -> list[float]:
        if self._unseen is None:  # a rule pickled before unseen_ce existed (a restored search): none reported so far
            self._unseen = [math.nan] * len(self._samples)
        return self._unseen

    def _reference(self, samples: float) -> tuple[float, float]:
        """The trend's reference: the newest point at least ``trend_samples`` old, else the oldest, within the
        current grace window (a head-LR change starts the trend afresh)."""
        first = bisect_left(self._samples, self._grace_start)
        i = max(bisect_right(self._samples, samples - self.trend_samples) - 1, first)
        return self._samples[i], self._ce_emas[i]


def first_verdict(
    rows: Iterable[dict[str, Any]], grace_samples: float, margin: float = DEFAULT_CHANCE_MARGIN, **judge: Any
) -> tuple[Optional[str], Optional[dict[str, Any]]]:
    """Replay a recorded curve through a fresh rule: ``(verdict, the row it was reached at)``, or
    ``(None, None)`` if the rule never stopped it. ``judge``: `ChanceLevelRule`'s keywords (``verdict``,
    ``budget_samples``, ``scope``), as the live run had them."""
    verdict, row, _ = replay(rows, grace_samples, margin, **judge)
    return verdict, row


def replay(
    rows: Iterable[dict[str, Any]], grace_samples: float, margin: float = DEFAULT_CHANCE_MARGIN, **judge: Any
) -> tuple[Optional[str], Optional[dict[str, Any]], Optional[EarlyVerdict]]:
    """`first_verdict`, with the early verdict's cause and evidence when it was the early rule that stopped it."""
    rule = ChanceLevelRule(grace_samples, margin, **judge)
    for row in rows:
        verdict = rule(row)
        if verdict is not None:
            return verdict, row, rule.early
    return None, None, None
