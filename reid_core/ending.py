"""How a run ended: decided here, and only here, for the live search, the plain job, the tables and the simulator.

A run's results stream ends for one of these reasons (the vocabulary is `reid_core.schema`):

- ``error``: the function raised (and was not retried to success);
- the chance-level rule's verdict (`reid_core.chance.ChanceLevelRule`): ``diverged`` (a non-finite
  ``ce``, ``ce_ema`` or ``loss``) or ``stuck_at_chance``;
- ``diverged`` too when the last result is non-finite although no rule saw it (a function that stops
  itself at a NaN loss, as ours does);
- ``completed``: it saw its budget of images, or the function returned by itself;
- stopped by the scheduler: named for the scheduler that stopped it (``asha``, ``pbt``);
- ``halted``: stopped with the whole search, whose stuck trials agreed on a cause no searched value fixes;
- ``unfinished``: none of these yet (still running, or interrupted).

Pure: no torch, no Ray.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional

from reid_core.schema import ASHA, COMPLETED, DIVERGED, ERROR, HALTED, UNFINISHED

LOSS_KEYS = ("ce", "ce_ema", "loss")  # a result whose reported value of any of these is NaN/inf has diverged


def diverged(result: Mapping[str, Any]) -> bool:
    """Whether ``result`` reports a non-finite ``ce``, ``ce_ema`` or ``loss`` (a user's function may report no loss)."""
    for key in LOSS_KEYS:
        value = result.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
            return True
    return False


def end_reason(
    *,
    failed: bool = False,
    verdict: Optional[str] = None,
    last: Optional[Mapping[str, Any]] = None,
    max_samples: Optional[float] = None,
    returned: bool = False,
    stopped: bool = False,
    scheduler: str = ASHA,
    halted: bool = False,
) -> str:
    """Why a run ended.

    ``failed``: it raised; ``verdict``: the chance-level rule's reason, if the rule stopped it; ``last``: its
    last result; ``max_samples``: its budget in images (None: none was set); ``returned``: the function
    ended by itself (the plain job); ``stopped``: something outside it ended it (Ray: stopped or done),
    which, when none of the reasons above holds, is its ``scheduler`` (``asha``, ``pbt``), or ``halted`` when the
    search had stopped every trial (``halted``: `reid_core.actions`).
    """
    if failed:
        return ERROR
    if verdict is not None:
        return verdict
    last = last or {}
    if last and diverged(last):
        return DIVERGED
    if last and max_samples is not None and last.get("samples", 0) >= max_samples:
        return COMPLETED
    if returned:
        return COMPLETED
    if not stopped:
        return UNFINISHED
    return HALTED if halted else scheduler
