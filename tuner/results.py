"""An experiment as one row per trial, without Ray or torch: pandas over files.

Works on finished, interrupted, resumed and still-running experiments (`tuner.experiment.Experiment`:
Ray's files read by `tuner.ray_files`, the search's settings by `tuner.settings.SearchSettings`). Why
each trial ended is what the driver recorded when it decided it; for experiments without the record it
comes from `reid_core.ending.end_reason`, the function the driver uses live, with the chance-level
rule's verdict found by replaying the trial's curve through the same `reid_core.chance.first_verdict`,
so the answer does not depend on the driver having survived.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

import pandas as pd

from reid_core.chance import EARLY, WINDOW, first_verdict, replay
from reid_core.diagnostics import UNKNOWN, stuck_cause
from reid_core.ending import end_reason
from reid_core.errors import UserError
from reid_core.repair import fix_args
from reid_core.schema import COMPLETED, END_REASONS, ERROR, HEAD_LR_COUNTS, STUCK
from tuner.experiment import Experiment
from tuner.lineage import PERTURBABLE, exploits_into, rerun_overrides, schedule_text, segments
from tuner.ray_files import TrialFiles
from tuner.settings import PBT, SCHEDULERS, SearchSettings
from tuner.storage import Location, write_json_atomic, write_text_atomic

Trial = TrialFiles  # a trial as its folder tells it: sampled values, status, per-step rows, error


def opened(exp: Experiment | str | Location) -> Experiment:
    """``exp`` itself, or the experiment at that place (for scripts and notebooks that pass a path)."""
    return exp if isinstance(exp, Experiment) else Experiment.open(exp)


def read_trials(exp: Experiment | str | Location, notes: Optional[list[str]] = None) -> list[Trial]:
    """Every trial of the experiment (`Experiment.trials`)."""
    return opened(exp).trials(notes)


def replayed_end_reason(trial: Trial, settings: SearchSettings) -> str:
    """Why the trial ended, worked out from its files alone: the rule replayed over its curve."""
    # Ray keeps error.txt after a retry that then succeeded: its status, when known, decides.
    failed = trial.status == "ERROR" or (trial.error is not None and trial.status != "TERMINATED")
    verdict, at = first_verdict(trial.rows, settings.grace_samples, settings.chance_margin, **settings.rule_keywords(trial.sampled))
    return end_reason(
        failed=failed,
        verdict=verdict if at is not None and at is trial.rows[-1] else None,  # the rule stopped it there
        last=trial.rows[-1] if trial.rows else {},
        max_samples=settings.max_samples,
        stopped=trial.status == "TERMINATED",
        scheduler=settings.scheduler,
    )


def trial_end_reason(trial: Trial, settings: SearchSettings) -> tuple[str, Optional[str]]:
    """``(end reason, disagreement)``: the reason the driver recorded when it decided it (the replay
    for experiments without the record), and a note when the record and the curve disagree, e.g.
    a curve a crash cut short. A disagreement marks the trial; it never re-labels it."""
    replayed = replayed_end_reason(trial, settings)
    recorded = trial.recorded.get("end_reason") if trial.recorded else None
    if recorded not in END_REASONS:
        return replayed, None
    last_step = trial.rows[-1]["step"] if trial.rows else 0
    if recorded == replayed and trial.recorded.get("step", last_step) == last_step:
        return recorded, None
    note = f"recorded {recorded} at step {trial.recorded.get('step')}, but the curve ends at step {last_step}"
    return recorded, note + (f" and reads as {replayed}" if replayed != recorded else "")


def trial_row(trial: Trial, settings: SearchSettings, lineage: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """One row of results.csv; ``lineage``: a PBT search's record (`tuner.lineage`)."""
    row: dict[str, Any] = {"trial_id": trial.trial_id}
    for key in settings.space:
        row[key] = trial.sampled.get(key)
    row["end_reason"], disagreement = trial_end_reason(trial, settings)
    cause = stuck_cause(trial.rows, settings.chance_margin, trial_config_or_none(trial, settings)) if row["end_reason"] == STUCK else None
    # `unknown` when nothing fits (or a damaged curve ends below the Go line): no evidence, no guess
    row["stuck_cause"] = (cause.cause if cause else UNKNOWN) if row["end_reason"] == STUCK else None
    # how the rule decided it: `early` (reid_core.early: before the grace window, on the head's evidence) or `window`
    row["verdict"] = _verdict_basis(trial, settings) if row["end_reason"] == STUCK else None
    rows = trial.rows
    last = rows[-1] if rows else {}
    ce_emas = [r["ce_ema"] for r in rows if math.isfinite(r["ce_ema"])]
    go = settings.go_line(last["chance_ce"]) if rows else None
    row.update(
        {
            "steps": last.get("step", 0),
            "samples": last.get("samples", 0),
            "final_ce_ema": last.get("ce_ema"),
            "best_ce_ema": min(ce_emas) if ce_emas else None,
            "go_samples": next((r["samples"] for r in rows if go is not None and r["ce_ema"] <= go), None),
            # the first step trained with SDM: where the CE-only phase ended (sdm_start=steps or go_line)
            "sdm_start_step": next((r["step"] for r in rows if (r.get("sdm_weight") or 0) > 0), None),
            # the trial's own head-LR changes (reid_core.head_lr): guard firings (CE ran away) and progressive raises
            **{key: int(last.get(key) or 0) for key in HEAD_LR_COUNTS},
            "wall_s": last.get("time_total_s"),
            # the Ray nodes that ran it, in order: more than one when it moved after a node was lost
            "node_ids": ";".join(dict.fromkeys(r["node_id"] for r in rows if r.get("node_id"))) or None,
        }
    )
    if settings.metric != "ce_ema":
        values = [r[settings.metric] for r in rows if settings.metric in r]
        row[objective_column(settings)] = values[-1] if values else None
    node = last.get("node_id")
    row["error"] = (trial.error + (f" (on node {node[:8]})" if node else "")) if row["end_reason"] == ERROR else None
    damage = [d.replace(f"{trial.path}/", "") for d in trial.damage]  # the trial's own folder goes without saying
    row["damage"] = "; ".join([*damage, *([disagreement] if disagreement else [])]) or None
    row["chance_ce"] = last.get("chance_ce")
    row["trial_dir"] = trial.path.name
    if settings.scheduler == PBT:
        # A trial's searched columns hold its last values; its schedules say how it got there, and samples_trained
        # counts what it trained itself (`samples` is how far its lineage got, part of it trained by others).
        entry = (lineage or {}).get("trials", {}).get(trial.trial_id)
        row["perturbations"] = exploits_into(lineage, trial.trial_id)
        for key in settings.perturbed:
            row[PERTURBABLE[key]] = schedule_text(entry, key)
        row["samples_trained"] = trial.samples_trained
    return row


def _verdict_basis(trial: Trial, settings: SearchSettings) -> str:
    _, _, early = replay(trial.rows, settings.grace_samples, settings.chance_margin, **settings.rule_keywords(trial.sampled))
    return EARLY if early is not None else WINDOW


def trial_config_or_none(trial: Trial, settings: SearchSettings) -> Any:
    """The trial's config, for the diagnosis to quote its configured LRs; None when it no longer builds."""
    try:
        return settings.trial_config(trial.sampled)
    except (UserError, ValueError, TypeError):
        return None


def stuck_diagnoses(trials: list[Trial], frame: pd.DataFrame, settings: SearchSettings) -> dict[str, Any]:
    """trial_id -> `reid_core.diagnostics.Diagnosis` of each trial stopped at chance that has head metrics."""
    by_id = {t.trial_id: t for t in trials}
    out = {}
    for trial_id in frame.loc[frame["end_reason"] == STUCK, "trial_id"] if not frame.empty else ():
        trial = by_id[trial_id]
        found = stuck_cause(trial.rows, settings.chance_margin, trial_config_or_none(trial, settings))
        if found is not None:
            out[trial_id] = found
    return out


def objective_column(settings: SearchSettings) -> str:
    return f"final_{settings.metric}"


def read_experiment(
    exp: Experiment | str | Location, notes: Optional[list[str]] = None
) -> tuple[SearchSettings, list[Trial], pd.DataFrame]:
    """``(settings, trials, table)``: the folder read once; the table sorted best first. A trial whose
    files a crash damaged is kept, its ``damage`` column saying what; ``notes`` collects one line each."""
    exp = opened(exp)
    settings, trials, lineage = exp.settings, exp.trials(notes), exp.lineage()
    frame = pd.DataFrame([trial_row(t, settings, lineage) for t in trials])
    if settings.repair and not frame.empty:
        add_repairs(frame, read_repairs(exp.path))
    if not frame.empty:
        col = objective_column(settings)
        frame = frame.sort_values(col, ascending=settings.mode == "min", na_position="last", kind="stable")
        frame = frame.reset_index(drop=True)
    return settings, trials, frame


REPAIRS_FILE = "repairs.json"  # a repairing search's record, as repairs-TIME.json (tuner.repairs.RepairBook)


def read_repairs(exp_dir: Location) -> list[dict[str, Any]]:
    """The repairs a search decided, from its newest ``repairs-TIME.json`` (one a driver session, `tuner.repairs`);
    ``[]`` for none, or for a file a crash left unreadable."""
    stem = REPAIRS_FILE.removesuffix(".json")
    files = sorted(exp_dir.glob(f"{stem}-*.json"), key=lambda p: p.name, reverse=True) if exp_dir.exists() else []
    for path in files:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return []


def add_repairs(frame: pd.DataFrame, repairs: list[dict[str, Any]]) -> None:
    """Columns ``repair_of`` (the stuck trial a repair was made for), ``repair`` (its change and the cause it fixes)
    and ``repair_note`` (a value beyond the searched space, say) on the repaired trials' rows."""
    by_trial = {e["trial"]: e for e in repairs if e.get("trial")}
    entry = [by_trial.get(t) for t in frame["trial_id"]]
    frame["repair_of"] = [e["of"] if e else None for e in entry]
    frame["repair"] = [f"{fix_args(e['changes'])} for {e['cause']}" if e else None for e in entry]
    frame["repair_note"] = [(e.get("note") or None) if e else None for e in entry]


def results_frame(exp_dir: Experiment | str | Location) -> pd.DataFrame:
    """One row per trial, sorted by the search's objective (best first). For notebooks::

        from tuner.results import results_frame
        df = results_frame("tune_results/my-search")
    """
    return read_experiment(exp_dir)[2]


def best_trial(frame: pd.DataFrame, settings: SearchSettings) -> Optional[pd.Series]:
    """The winner: the best objective among completed trials, else among those the scheduler cut. Never a trial
    still running or interrupted: its value is not a result yet."""
    col = objective_column(settings)
    candidates = frame[frame["end_reason"] == COMPLETED]
    if candidates[col].notna().sum() == 0:
        candidates = frame[frame["end_reason"].isin([COMPLETED, *SCHEDULERS])]
    candidates = candidates[candidates[col].notna()]
    if candidates.empty:
        return None
    values = candidates[col].astype(float)
    return candidates.loc[values.idxmin() if settings.mode == "min" else values.idxmax()]


def write_exports(exp: Experiment) -> dict[str, Any]:
    """Write results.csv and best_config.json (atomically, also on an object store); return what a summary needs."""
    exp_dir = exp.path
    settings, trial_list, frame = read_experiment(exp)
    trials = {t.trial_id: t for t in trial_list}
    write_text_atomic(exp_dir / "results.csv", frame.to_csv(index=False))
    best = best_trial(frame, settings) if not frame.empty else None
    out: dict[str, Any] = {"frame": frame, "settings": settings, "trials": trial_list, "best": best, "best_config": None}
    if best is not None:
        trial = trials[best["trial_id"]]
        lineage = exp.lineage()
        payload = {
            "config": export_config(settings, trial, lineage),
            "trial_id": trial.trial_id,
            "searched": {k: trial.sampled.get(k) for k in settings.space},
            "end_reason": best["end_reason"],
            "metrics": {k: v for k, v in trial.rows[-1].items() if not isinstance(v, dict)},
            "experiment": str(exp_dir.resolve()),
            "trial_dir": trial.path.name,
            "rerun": settings.rerun_command(),
            **settings.rerun_settings(),  # which function, and the budget and grace window its re-run keeps
        }
        entry = (lineage or {}).get("trials", {}).get(trial.trial_id)
        if entry is not None:  # PBT: the trials the winner's weights passed through, and where
            payload["pbt_lineage"] = segments(entry, trial.trial_id)
        write_json_atomic(exp_dir / "best_config.json", payload)
        out["best_config"] = exp_dir / "best_config.json"
    return out


def export_config(settings: SearchSettings, trial: Trial, lineage: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The config that re-runs a trial as a plain job: its config, or under PBT its lineage's (the root's
    values and the LR schedules of `tuner.lineage.rerun_overrides`; the trial's last config if not recorded)."""
    entry = (lineage or {}).get("trials", {}).get(trial.trial_id)
    overrides = rerun_overrides(entry, settings.perturbed) if entry is not None else {}
    return settings.trial_config({**trial.sampled, **overrides})


def compute_account(frame: pd.DataFrame, settings: SearchSettings) -> dict[str, Any]:
    """Images spent per end reason, and the share saved against every trial running to its budget. Under PBT
    what each trial trained itself (``samples_trained``): a copied checkpoint's images were spent by its trial."""
    budget = settings.max_samples * len(frame)
    column = "samples_trained" if "samples_trained" in frame else "samples"
    spent = int(frame[column].sum()) if not frame.empty else 0
    by_reason = frame.groupby("end_reason")[column].sum().astype(int).to_dict() if not frame.empty else {}
    return {
        "spent": spent,
        "budget": budget,
        "saved_fraction": 1 - spent / budget if budget else 0.0,
        "by_reason": by_reason,
    }
