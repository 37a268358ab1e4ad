"""What a stuck verdict lets the harness do next: stop the whole search, or say the fix.

A cause names what holds the head at chance. Some causes live in the code or the data (labels that
do not belong to their images, a head no gradient reaches, features that are the same for every
image): no value a search samples can move them, and every further trial pays its window to learn
the same thing. `halt_count` says whether a cause is one of those for a given search space, and how
many stuck trials must agree on it before the search stops itself:

- **one trial** when the evidence is exact and cannot depend on a sampled value: a gradient that is
  exactly 0, weights exactly unchanged while a gradient reaches them, or a label smoothing whose CE
  floor is above the Go line by arithmetic on the config;
- **two trials** with different sampled values for the causes read from thresholds (labels with no
  signal or memorised, collapsed features, bounded logits, AMP skipping most steps): a sampled value
  at the edge of the space (a head LR high enough to run away, one that overflows fp16) can look like
  one of them on a single trial, rarely on two different ones.

And never while any trial of the search has crossed the Go line: a trial that learned shows the
wiring works, so the stuck ones are about their values. Pure: no torch, no Ray.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

from reid_core.early import EXACT, WIRING

# Causes no searched value can fix are the early verdict's wiring causes (no LR and no time repairs them); one trial
# settles those of them whose evidence is exact, but for AMP's skip count (an LR that overflows fp16 can cause it).
ONE_TRIAL = EXACT - {"amp_skipped_steps"}
# The config key whose search makes a cause fixable by a searched value after all.
FIXED_BY = {"label_smoothing_too_high": "label_smoothing", "amp_skipped_steps": "amp"}

HALT_EXIT = 3  # exit code of a search that stopped itself on such a cause (0, 1, 2 and 130 are taken)


def halt_count(cause: str, searched: Iterable[str]) -> Optional[int]:
    """How many stuck trials must agree on ``cause`` before a search over ``searched`` keys stops; None: it
    never stops the search (a searched value may fix it, or it is `unknown`)."""
    if cause not in WIRING or FIXED_BY.get(cause) in set(searched):
        return None
    return 1 if cause in ONE_TRIAL else 2


class Agreement:
    """The stuck verdicts of a search so far, and whether they agree on a cause no searched value fixes.

    Feed it every result (`seen`: has any trial crossed the Go line?) and every stuck verdict
    (`stuck`); `decided` is then ``(cause, trial ids, evidence, fix)`` once enough trials agree."""

    def __init__(self, searched: Sequence[str]):
        self.searched = tuple(searched)
        self.crossed = False  # some trial got below the Go line: the wiring works
        self.verdicts: dict[str, tuple[str, str, str, tuple]] = {}  # trial_id -> (cause, evidence, fix, sampled values)
        self.decided: Optional[tuple[str, list[str], str, str]] = None

    def learned(self) -> None:
        self.crossed = True

    def stuck(self, trial_id: str, cause: str, evidence: str, fix: str, sampled: Mapping[str, Any]) -> bool:
        """Record one stuck verdict; True when it decides the search's halt."""
        values = tuple(sorted((k, repr(sampled.get(k))) for k in self.searched))
        self.verdicts[trial_id] = (cause, evidence, fix, values)
        needed = halt_count(cause, self.searched)
        if self.decided is not None or self.crossed or needed is None:
            return False
        agreeing = [tid for tid, (c, *_rest) in self.verdicts.items() if c == cause]
        if len({self.verdicts[tid][3] for tid in agreeing}) < needed:  # distinct sampled values
            return False
        self.decided = (cause, agreeing, evidence, fix)
        return True


def halt_message(cause: str, trials: Sequence[str], evidence: str, fix: str, searched: Sequence[str]) -> str:
    """The one line a halted search prints (stderr) before it exits with `HALT_EXIT`."""
    who = f"trial {trials[0]}" if len(trials) == 1 else f"{len(trials)} trials ({', '.join(trials)}) agree"
    return (
        f"search stopped: {who}: stuck_at_chance because {cause} ({evidence}); no value of {', '.join(searched) or 'the space'} "
        f"can fix that; fix: {fix}; then search again (--keep-going runs every trial anyway)"
    )


def stuck_message(cause: str, evidence: str, fix: str, step: int, rerun: Optional[str] = None) -> str:
    """The one line a plain run stopped as stuck prints: the same cause, evidence and fix a search prints, and the
    re-run command that applies the fix where a config value is the fix."""
    tail = f"; re-run with the fix: {rerun}" if rerun else ""
    return f"stopped: stuck_at_chance at step {step} because {cause} ({evidence}); fix: {fix}{tail}"
