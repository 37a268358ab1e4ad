"""What Ray Tune writes in an experiment folder, read without Ray (checked against Ray 2.60).

Ray's own readers (``ResultGrid``, ``ExperimentAnalysis``) import Ray and torch; reading tables
and drawing curves needs neither. This is the one module that knows Ray's file layout. It reads
what a crash leaves: an unreadable line or file is skipped and named in a note, never fatal. The
experiment may be a local folder or a storage URI (`tuner.storage.location`).

- ``<trial folder>/params.json``: the trial's sampled config;
- ``<trial folder>/result.json``: one JSON object per line, one line per ``tune.report``;
- ``<trial folder>/error.txt``: the failure's traceback, when the trial raised;
- ``<trial folder>/end_reason.json``: ours, not Ray's (`END_REASON_FILE`), written by the driver
  when the trial's end was decided;
- ``experiment_state-<timestamp>.json``: the controller's snapshot; ``trial_data`` is a list of
  ``[trial_json, runtime_json]`` pairs, ``trial_json`` a JSON string holding at least
  ``trial_id``, ``status`` (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) and ``relative_logdir``.
  Not a public format: where it cannot be read, trial statuses are unknown (None) and the
  callers fall back to what the trial folders say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from tuner.storage import Location


END_REASON_FILE = "end_reason.json"  # ours, beside Ray's files: why the trial ended, written when it was decided


@dataclass
class TrialFiles:
    trial_id: str
    path: Location  # the trial's folder (a local Path, or a StoragePath on an object store)
    sampled: dict[str, Any]  # params.json as written
    status: Optional[str]  # Ray's status from the newest experiment state; None if unknown
    rows: list[dict[str, Any]] = field(default_factory=list)  # result.json: the curve as it stands, images seen ascending
    samples_trained: float = 0.0  # images this trial trained: every report counted, also those a restore undid
    error: Optional[str] = None  # last non-blank line of error.txt
    recorded: Optional[dict[str, Any]] = None  # end_reason.json: {"end_reason", "step", "samples"}, if written
    damage: list[str] = field(default_factory=list)  # what a crash left unreadable, one note each


def statuses(exp_dir: Location) -> tuple[dict[str, tuple[Optional[str], Optional[str]]], Optional[str]]:
    """``(trial_id -> (status, relative_logdir), note)`` from Ray's newest experiment state; the note says
    why the state could not be read (then every status is unknown)."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        return {}, None
    try:
        data = json.loads(states[-1].read_text())
        out = {}
        for trial_json, _runtime in data.get("trial_data", []):
            t = json.loads(trial_json)
            out[t["trial_id"]] = (t.get("status"), t.get("relative_logdir"))
        return out, None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:  # a crash mid-write, or a format we do not know
        return {}, f"{states[-1]} is unreadable ({type(err).__name__}); trial statuses unknown, end reasons read from the trials' own files"


def curve_of(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A trial restored from a checkpoint (a retry; under PBT, another trial's checkpoint) reports from its
    restore point on: read in report order, each report undoes the ones at or past its images seen (steps for
    a report without ``samples``). Without restores this is every report."""
    curve: list[dict[str, Any]] = []
    for row in reports:
        at = row.get("samples", row["step"])
        while curve and curve[-1].get("samples", curve[-1]["step"]) >= at:
            curve.pop()
        curve.append(row)
    return curve


def samples_trained(reports: list[dict[str, Any]]) -> float:
    """Images a trial trained, every report counted once (one optimizer step of ``samples / step`` images)."""
    return float(sum(r["samples"] / r["step"] for r in reports if r.get("samples") and r.get("step")))


def read_reports(result_file: Location) -> tuple[list[dict[str, Any]], list[str]]:
    """``(every training step the trial reported, in report order; notes on unreadable lines)``."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if not result_file.is_file():
        return rows, notes
    for number, line in enumerate(result_file.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # truncated by a crash, or being written as we read
            notes.append(f"{result_file} line {number} is unreadable and was skipped")
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows, notes


def last_error_line(trial_dir: Location) -> Optional[str]:
    error_file = trial_dir / "error.txt"
    if not error_file.is_file():
        return None
    lines = [ln for ln in error_file.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "unknown error"


def _read_json(path: Location, damage: list[str]) -> Optional[Any]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        damage.append(f"{path} is unreadable ({type(err).__name__})")
        return None


def read_trial_folders(exp_dir: Location) -> tuple[list[TrialFiles], list[str]]:
    """Every trial folder of the experiment (those holding params.json), sorted by folder name, and
    notes on what could not be read."""
    known, state_note = statuses(exp_dir)
    notes = [state_note] if state_note else []
    trials = []
    for params_file in sorted(exp_dir.glob("*/params.json")):
        trial_dir = params_file.parent
        reports, damage = read_reports(trial_dir / "result.json")
        rows = curve_of(reports)
        sampled = _read_json(params_file, damage)
        recorded = _read_json(trial_dir / END_REASON_FILE, damage)
        trial_id = rows[-1].get("trial_id") if rows else None
        if trial_id is None and isinstance(recorded, dict):
            trial_id = recorded.get("trial_id")
        if trial_id is None:
            trial_id = next((tid for tid, (_, d) in known.items() if d == trial_dir.name), trial_dir.name)
        trials.append(
            TrialFiles(
                trial_id=trial_id,
                path=trial_dir,
                sampled=sampled if isinstance(sampled, dict) else {},
                status=known.get(trial_id, (None, None))[0],
                rows=rows,
                samples_trained=samples_trained(reports),
                error=last_error_line(trial_dir),
                recorded=recorded if isinstance(recorded, dict) else None,
                damage=damage,
            )
        )
        notes.extend(damage)
    return trials, notes
