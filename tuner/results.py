"""Read an experiment folder into one row per trial, without Ray running.

Works on finished, interrupted, resumed and still-running experiments: it reads
what Ray writes (each trial's ``params.json``, ``result.json``, ``error.txt``;
the newest ``experiment_state-*.json`` for trial statuses) and our own
``reid_tune.json`` (the search's settings). Why each trial ended is derived
from its metrics by replaying the same `ChanceLevelRule` the search used, so
the answer does not depend on the driver having survived.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from reid_core.diagnostics import stuck_cause
from reid_core.errors import UserError
from reid_core.io import write_json_atomic, write_text_atomic
from tuner.stoppers import ChanceLevelRule
from tuner.trainable import trial_config

SEARCH_FILE = "reid_tune.json"  # the search's own settings, written before the first trial
END_REASONS = ("completed", "asha", "stuck_at_chance", "diverged", "error", "unfinished")


@dataclass
class Trial:
    trial_id: str
    path: Path
    sampled: dict[str, Any]  # the searched values
    status: Optional[str]  # Ray's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED (None if unknown)
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per optimizer step
    error: Optional[str] = None  # last line of the trial's error


def read_search(exp_dir: Path) -> dict[str, Any]:
    path = Path(exp_dir) / SEARCH_FILE
    if not path.is_file():
        raise UserError(f"'{exp_dir}' is not a reid-tune experiment (no {SEARCH_FILE}); pass the folder a search wrote")
    return json.loads(path.read_text())


def _statuses(exp_dir: Path) -> dict[str, tuple[str, str]]:
    """trial_id -> (status, relative_logdir) from Ray's newest experiment state, if any."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being rewritten right now
        return {}
    out = {}
    for trial_json, _runtime in data.get("trial_data", []):
        t = json.loads(trial_json)
        out[t["trial_id"]] = (t.get("status"), t.get("relative_logdir"))
    return out


def _read_rows(result_file: Path) -> list[dict[str, Any]]:
    rows = []
    if not result_file.is_file():
        return rows
    for line in result_file.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written as we read
            continue
        if "step" in row:
            rows.append(row)
    # A restored trial may repeat steps it had already reported: keep the last report of each step.
    by_step = {row["step"]: row for row in rows}
    return [by_step[s] for s in sorted(by_step)]


def read_trials(exp_dir: Path) -> list[Trial]:
    exp_dir = Path(exp_dir)
    statuses = _statuses(exp_dir)
    trials = []
    for params_file in sorted(exp_dir.glob("*/params.json")):
        trial_dir = params_file.parent
        rows = _read_rows(trial_dir / "result.json")
        trial_id = rows[-1]["trial_id"] if rows else None
        if trial_id is None:
            trial_id = next((tid for tid, (_, d) in statuses.items() if d == trial_dir.name), trial_dir.name)
        error = None
        error_file = trial_dir / "error.txt"
        if error_file.is_file():
            lines = [ln for ln in error_file.read_text().splitlines() if ln.strip()]
            error = lines[-1].strip() if lines else "unknown error"
        trials.append(
            Trial(
                trial_id=trial_id,
                path=trial_dir,
                sampled=json.loads(params_file.read_text()),
                status=statuses.get(trial_id, (None, None))[0],
                rows=rows,
                error=error,
            )
        )
    return trials


def end_reason(trial: Trial, search: dict[str, Any]) -> str:
    # Ray keeps error.txt after a retry that then succeeded: its status, when known, decides.
    if trial.status == "ERROR" or (trial.error is not None and trial.status != "TERMINATED"):
        return "error"
    if trial.rows:
        rule = ChanceLevelRule(search["grace_samples"], search["chance_margin"], search.get("trend_samples"))
        verdict = None
        for row in trial.rows:
            verdict = rule(row)
            if verdict is not None:
                break
        if verdict is not None and row is trial.rows[-1]:
            return verdict
        last = trial.rows[-1]
        if not (math.isfinite(last["ce"]) and math.isfinite(last["loss"])):
            return "diverged"  # the training job's own NaN stop
        if last["step"] >= trial_config(search["base"], trial.sampled).max_steps:
            return "completed"
    if trial.status == "TERMINATED":
        return "asha"
    return "unfinished"


def trial_row(trial: Trial, search: dict[str, Any]) -> dict[str, Any]:
    go_line = None
    row: dict[str, Any] = {"trial_id": trial.trial_id}
    for key in search["space"]:
        row[key] = trial.sampled.get(key)
    row["end_reason"] = end_reason(trial, search)
    cause = stuck_cause(trial.rows, search["chance_margin"]) if row["end_reason"] == "stuck_at_chance" else None
    row["stuck_cause"] = cause.cause if cause else None
    rows = trial.rows
    last = rows[-1] if rows else {}
    ce_emas = [r["ce_ema"] for r in rows if math.isfinite(r["ce_ema"])]
    if rows:
        go_line = last["chance_ce"] - search["chance_margin"]
    metric = search["metric"]
    row.update(
        {
            "steps": last.get("step", 0),
            "samples": last.get("samples", 0),
            "final_ce_ema": last.get("ce_ema"),
            "best_ce_ema": min(ce_emas) if ce_emas else None,
            "go_samples": next((r["samples"] for r in rows if go_line is not None and r["ce_ema"] <= go_line), None),
            "wall_s": last.get("time_total_s"),
        }
    )
    if metric != "ce_ema":
        values = [r[metric] for r in rows if metric in r]
        row[f"final_{metric}"] = values[-1] if values else None
    row["error"] = trial.error if row["end_reason"] == "error" else None
    row["chance_ce"] = last.get("chance_ce")
    row["trial_dir"] = trial.path.name
    return row


def objective_column(search: dict[str, Any]) -> str:
    return f"final_{search['metric']}"


def read_experiment(exp_dir: str | Path) -> tuple[dict[str, Any], list[Trial], pd.DataFrame]:
    """``(search settings, trials, table)``: the folder read once; the table sorted best first."""
    exp_dir = Path(exp_dir)
    search = read_search(exp_dir)
    trials = read_trials(exp_dir)
    frame = pd.DataFrame([trial_row(t, search) for t in trials])
    if not frame.empty:
        col = objective_column(search)
        frame = frame.sort_values(col, ascending=search["mode"] == "min", na_position="last", kind="stable")
        frame = frame.reset_index(drop=True)
    return search, trials, frame


def results_frame(exp_dir: str | Path) -> pd.DataFrame:
    """One row per trial, sorted by the search's objective (best first). For notebooks::

        from tuner.results import results_frame
        df = results_frame("tune_results/my-search")
    """
    return read_experiment(exp_dir)[2]


def best_trial(frame: pd.DataFrame, search: dict[str, Any]) -> Optional[pd.Series]:
    """The winner: the best objective among completed trials (among any finite ones if none completed)."""
    col = objective_column(search)
    candidates = frame[frame["end_reason"] == "completed"]
    if candidates[col].notna().sum() == 0:
        candidates = frame[frame["end_reason"].isin(["completed", "asha", "unfinished"])]
    candidates = candidates[candidates[col].notna()]
    if candidates.empty:
        return None
    values = candidates[col].astype(float)
    return candidates.loc[values.idxmin() if search["mode"] == "min" else values.idxmax()]


def write_exports(exp_dir: str | Path) -> dict[str, Any]:
    """Write results.csv and best_config.json (atomically); return what a summary needs."""
    exp_dir = Path(exp_dir)
    search, trial_list, frame = read_experiment(exp_dir)
    trials = {t.trial_id: t for t in trial_list}
    write_text_atomic(exp_dir / "results.csv", frame.to_csv(index=False))
    best = best_trial(frame, search) if not frame.empty else None
    out: dict[str, Any] = {"frame": frame, "search": search, "trials": trial_list, "best": best, "best_config": None}
    if best is not None:
        trial = trials[best["trial_id"]]
        cfg = trial_config(search["base"], trial.sampled)
        payload = {
            "config": cfg.to_dict(),
            "trial_id": trial.trial_id,
            "searched": {k: trial.sampled.get(k) for k in search["space"]},
            "end_reason": best["end_reason"],
            "metrics": {k: v for k, v in trial.rows[-1].items() if not isinstance(v, dict)},
            "experiment": str(exp_dir.resolve()),
            "trial_dir": trial.path.name,
            "rerun": "python -m reid_core.train --config best_config.json --out DIR",
        }
        write_json_atomic(exp_dir / "best_config.json", payload)
        out["best_config"] = exp_dir / "best_config.json"
    return out


def compute_account(frame: pd.DataFrame, search: dict[str, Any]) -> dict[str, Any]:
    """Images spent per end reason, and the share saved against every trial running to its budget."""
    budget = search["max_samples"] * len(frame)
    spent = int(frame["samples"].sum()) if not frame.empty else 0
    by_reason = frame.groupby("end_reason")["samples"].sum().astype(int).to_dict() if not frame.empty else {}
    return {
        "spent": spent,
        "budget": budget,
        "saved_fraction": 1 - spent / budget if budget else 0.0,
        "by_reason": by_reason,
    }
