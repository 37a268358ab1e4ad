"""The search's summary in words: how the trials ended, why the stuck ones were stuck, the winner, the compute
saved and which searched value mattered. Printed at the end of a search (`tuner.progress.summarise`) and put
at the top of ``reid-tune report --html``. No Ray, no torch.
"""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from reid_core.schema import COMPLETED, DIVERGED, ERROR, HALTED, STUCK, UNFINISHED
from tuner.importance import Importance
from tuner.lineage import PERTURBABLE
from tuner.results import compute_account
from tuner.settings import PBT, SCHEDULERS, SearchSettings


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def counts_line(frame: pd.DataFrame, settings: SearchSettings, wall_s: Optional[float] = None) -> str:
    """``8 trials in 95s: 3 completed, 2 cut by ASHA, ...`` (no time when ``wall_s`` is None)."""
    counts = frame["end_reason"].value_counts().to_dict() if not frame.empty else {}
    return (
        f"{len(frame)} trials" + (f" in {wall_s:.0f}s" if wall_s is not None else "") + f": {counts.get(COMPLETED, 0)} completed, "
        + "".join(f"{counts.get(s, 0)} cut by {s.upper()}, " for s in SCHEDULERS if counts.get(s) or s == settings.scheduler)
        + f"{counts.get(STUCK, 0)} stuck at chance, "
        f"{counts.get(DIVERGED, 0)} diverged, {counts.get(ERROR, 0)} errored"
        + (f", {counts[UNFINISHED]} unfinished" if counts.get(UNFINISHED) else "")
        + (f", {counts[HALTED]} stopped with the search" if counts.get(HALTED) else "")
    )


def summary_lines(
    frame: pd.DataFrame, settings: SearchSettings, best: Optional[pd.Series], importance: Importance, wall_s: Optional[float] = None
) -> list[str]:
    """Every line of the summary from the counts to the failed trials (the files written are the caller's)."""
    lines = [counts_line(frame, settings, wall_s)]
    causes = frame["stuck_cause"].dropna().value_counts().to_dict() if not frame.empty else {}
    if causes:
        lines.append("stuck at chance because: " + ", ".join(f"{cause} x{n}" for cause, n in causes.items()))
    if "repair_of" in frame and frame["repair_of"].notna().any():
        repaired = frame[frame["repair_of"].notna()]
        crossed = int(repaired["go_samples"].notna().sum())
        beyond = int(repaired["repair_note"].notna().sum())
        notes = f"; {beyond} beyond the searched space (repair_note: the whole range is too low for this run)" if beyond else ""
        lines.append(f"repairs: {crossed} of {len(repaired)} crossed the Go line (results.csv: repair_of, repair){notes}")
    if best is not None:
        params = ", ".join(f"{k}={fmt(best[k])}" for k in settings.space)
        metric = settings.metric
        lines.append(f"best: trial {best['trial_id']} ({params}): {metric} {best[f'final_{metric}']:.3f}, {best['end_reason']}")
    else:
        lines.append("best: none yet (no trial completed or was cut by the scheduler), so no best_config.json")
    if settings.scheduler == PBT and not frame.empty:
        line = f"PBT: {int(frame['perturbations'].sum())} exploits (a trial continued from a copy of a better one's checkpoint)"
        if best is not None:
            line += "; the winner's " + "; ".join(f"{PERTURBABLE[k]} {best[PERTURBABLE[k]]}" for k in settings.perturbed)
        lines.append(line)
    if not frame.empty:
        account = compute_account(frame, settings)
        lines.append(
            f"compute: {account['spent']:,} of {account['budget']:,} trial-images "
            f"({account['saved_fraction']:.0%} saved by early stops)"
        )
        lines += importance.lines()
    errors = frame[frame["end_reason"] == ERROR] if not frame.empty else frame
    lines += [f"trial {row['trial_id']} failed: {row['error']}" for _, row in errors.iterrows()]
    return lines
