"""What Ray Tune writes in an experiment folder, read without Ray (checked against Ray 2.60).

Ray's own readers (``ResultGrid``, ``ExperimentAnalysis``) import Ray and torch; reading tables
and drawing curves needs neither. This is the one module that knows Ray's file layout:

- ``<trial folder>/params.json``: the trial's sampled config;
- ``<trial folder>/result.json``: one JSON object per line, one line per ``tune.report``;
- ``<trial folder>/error.txt``: the failure's traceback, when the trial raised;
- ``experiment_state-<timestamp>.json``: the controller's snapshot; ``trial_data`` is a list of
  ``[trial_json, runtime_json]`` pairs, ``trial_json`` a JSON string holding at least
  ``trial_id``, ``status`` (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) and ``relative_logdir``.
  Not a public format: where it cannot be read, trial statuses are unknown (None) and the
  callers fall back to what the trial folders say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class TrialFiles:
    trial_id: str
    path: Path  # the trial's folder
    sampled: dict[str, Any]  # params.json as written
    status: Optional[str]  # Ray's status from the newest experiment state; None if unknown
    rows: list[dict[str, Any]] = field(default_factory=list)  # result.json, one per report, by step
    error: Optional[str] = None  # last non-blank line of error.txt


def statuses(exp_dir: Path) -> dict[str, tuple[Optional[str], Optional[str]]]:
    """trial_id -> (status, relative_logdir) from Ray's newest experiment state, if readable."""
    states = sorted(Path(exp_dir).glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
        out = {}
        for trial_json, _runtime in data.get("trial_data", []):
            t = json.loads(trial_json)
            out[t["trial_id"]] = (t.get("status"), t.get("relative_logdir"))
        return out
    except (OSError, ValueError, TypeError, KeyError):  # being rewritten right now, or a format we do not know
        return {}


def read_results(result_file: Path) -> list[dict[str, Any]]:
    """The training steps a trial reported, one per step, in step order."""
    rows = []
    if not result_file.is_file():
        return rows
    for line in result_file.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written as we read
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    # A restored trial may repeat steps it had already reported: keep the last report of each step.
    by_step = {row["step"]: row for row in rows}
    return [by_step[s] for s in sorted(by_step)]


def last_error_line(trial_dir: Path) -> Optional[str]:
    error_file = trial_dir / "error.txt"
    if not error_file.is_file():
        return None
    lines = [ln for ln in error_file.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "unknown error"


def read_trial_folders(exp_dir: Path) -> list[TrialFiles]:
    """Every trial folder of the experiment (those holding params.json), sorted by folder name."""
    exp_dir = Path(exp_dir)
    known = statuses(exp_dir)
    trials = []
    for params_file in sorted(exp_dir.glob("*/params.json")):
        trial_dir = params_file.parent
        rows = read_results(trial_dir / "result.json")
        trial_id = rows[-1].get("trial_id") if rows else None
        if trial_id is None:
            trial_id = next((tid for tid, (_, d) in known.items() if d == trial_dir.name), trial_dir.name)
        trials.append(
            TrialFiles(
                trial_id=trial_id,
                path=trial_dir,
                sampled=json.loads(params_file.read_text()),
                status=known.get(trial_id, (None, None))[0],
                rows=rows,
                error=last_error_line(trial_dir),
            )
        )
    return trials
