"""The chance level's numbers: the seed's smoke window and the Go line, ``log(C) - margin``.

Apart from the rule (`reid_core.chance`) so that the causes and their evidence, which the rule's early
verdict reads (`reid_core.early`), can quote the line without importing the rule.
"""

from __future__ import annotations

DEFAULT_GRACE_STEPS = 300  # the seed team's smoke window, optimizer steps at accumulation 1
DEFAULT_CHANCE_MARGIN = 0.39  # Go line = log(C) - 0.39: 5.6 for 400 identities, the seed's number


def go_line(chance_ce: float, margin: float = DEFAULT_CHANCE_MARGIN) -> float:
    """The CE a run must reach to count as learning: ``log(C) - margin``."""
    return chance_ce - margin
