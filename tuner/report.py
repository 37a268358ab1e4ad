"""Tables and pictures of an experiment folder, and the check that a re-run reproduces its trial.

    python -m tuner.report tune_results/NAME                       # table, compute account, pictures
    python -m tuner.report tune_results/NAME --reason stuck_at_chance --format markdown
    python -m tuner.report tune_results/NAME --compare runs/rerun  # trial curve vs plain re-run
    python -m tuner.report s3://bucket/experiments/NAME             # an experiment on shared storage

Needs no running Ray: it reads the files, from a folder or a storage URI (`tuner.storage`). Works on
finished, interrupted, resumed and still-running experiments. In a notebook::

    from tuner.report import load
    df = load("tune_results/NAME")
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser, parse_args
from reid_core.schema import END_REASONS, HEAD_LR_COUNTS
from tuner.experiment import Experiment
from tuner.html_report import report_html
from tuner.importance import FILE as IMPORTANCE_FILE
from tuner.importance import Importance, importance_figure, param_importances
from tuner.lineage import lineage_rows
from tuner.results import (
    best_trial,
    compute_account,
    export_config,
    objective_column,
    opened,
    read_experiment,
    results_frame,
    stuck_diagnoses,
)
from tuner.settings import SearchSettings
from tuner.storage import Location, write_bytes_atomic, write_text_atomic

PROG = "python -m tuner.report"
TABLE_FORMATS = ("table", "csv", "json", "markdown")  # how the per-trial table is printed
HTML_FILE = "report.html"  # --html with no FILE: in the experiment folder

# On CPU the trial and its plain re-run execute the same float operations in the same order
# (same seed, threads, data order and fused AdamW), so their CE curves are bit-identical; the
# tolerance only absorbs BLAS builds that reorder a reduction between processes.
COMPARE_TOLERANCE = 1e-5


def load(exp_dir: str | Location) -> pd.DataFrame:
    """The per-trial table as a pandas DataFrame, best first (what ``results.csv`` holds, sorted)."""
    return results_frame(exp_dir)


def filtered(frame: pd.DataFrame, reason: Optional[str], top: Optional[int]) -> pd.DataFrame:
    if reason is not None:
        frame = frame[frame["end_reason"] == reason]
    if top is not None:
        frame = frame.head(top)
    return frame.reset_index(drop=True)


def shown_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as shown (printed or in the HTML page): no folder and chance columns, node ids shortened,
    no column that says nothing (no error, no damage, no head-LR change in any trial)."""
    shown = frame.drop(columns=["trial_dir", "chance_ce"], errors="ignore")
    if "node_ids" in shown:  # 56 hex digits each: one node says nothing, several are told apart by 8
        ids = shown["node_ids"].dropna()
        if ids.nunique() <= 1:
            shown = shown.drop(columns=["node_ids"])
        else:
            shown = shown.assign(node_ids=shown["node_ids"].map(lambda v: ";".join(n[:8] for n in v.split(";")) if isinstance(v, str) else v))
    shown = shown.astype(object).where(shown.notna(), None)  # an empty cell for NaN and missing alike
    for column in ("error", "damage"):  # no trial failed or was damaged: no column of blanks
        if column in shown and shown[column].isna().all():
            shown = shown.drop(columns=[column])
    for column in HEAD_LR_COUNTS:  # no trial changed its own head LR: no column of zeros
        if column in shown and not shown[column].fillna(0).astype(bool).any():
            shown = shown.drop(columns=[column])
    return shown


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return frame.drop(columns=["trial_dir", "chance_ce"], errors="ignore").to_csv(index=False)
    if fmt == "json":
        return frame.drop(columns=["trial_dir", "chance_ce"], errors="ignore").to_json(orient="records", indent=2) + "\n"
    shown = shown_table(frame)
    if fmt == "markdown":
        cells = [[_cell(v) for v in row] for row in shown.itertuples(index=False)]
        lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines) + "\n"
    if shown.empty:
        return "(no trials)\n"
    return shown.to_string(index=False, formatters={c: _cell for c in shown.columns}) + "\n"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def healthy_head_text(frame: pd.DataFrame, trials, settings: SearchSettings) -> str:
    """Under the table: each stuck trial's head beside a healthy head's reference values (the seed's 权重范数基准)."""
    found = stuck_diagnoses(trials, frame, settings)
    lines = [f"  {trial_id} ({d.cause}): {d.reference}" for trial_id, d in found.items() if d.reference]
    return "".join(f"{line}\n" for line in ["stuck trials' heads vs a healthy head:", *lines]) if lines else ""


def account_text(frame: pd.DataFrame, settings: SearchSettings) -> str:
    account = compute_account(frame, settings)
    parts = [
        f"{reason} {images:,} ({images / account['spent']:.0%})" if account["spent"] else f"{reason} 0"
        for reason, images in sorted(account["by_reason"].items(), key=lambda kv: -kv[1])
    ]
    return (
        f"compute: {account['spent']:,} trial-images spent of {account['budget']:,} if every trial ran to its budget "
        f"({account['saved_fraction']:.0%} saved); by end reason: {', '.join(parts) or 'none'}"
    )


def hyperparams_png(frame: pd.DataFrame, settings: SearchSettings, path: Location) -> None:
    """`hyperparams_figure`, written atomically."""
    from tuner.plots import save_figure

    save_figure(hyperparams_figure(frame, settings), path)


def hyperparams_figure(frame: pd.DataFrame, settings: SearchSettings):
    """Each searched hyperparameter against the final objective, coloured by end reason."""
    import matplotlib.pyplot as plt

    from tuner.plots import REASON_STYLE

    keys = list(settings.space)
    col = objective_column(settings)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for reason, group in frame.groupby("end_reason"):
            marker, colour = REASON_STYLE.get(reason, ("o", "gray"))
            ax.scatter(group[key], group[col], marker=marker, color=colour, label=reason, s=40, alpha=0.8)
        if settings.space[key].startswith(("loguniform", "qloguniform", "lograndint")):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
    go = _go_line(frame, settings)
    if go is not None:
        for ax in axes[0]:
            ax.axhline(go, color="tab:blue", linestyle=":", linewidth=1.2, label="Go line")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"where the learnable region starts ({len(frame)} trials)")
    return fig


def pictures(trials, frame: pd.DataFrame, settings: SearchSettings, importance: Importance) -> dict[str, bytes]:
    """The report's pictures, file name -> PNG bytes: the curves, what mattered (when it was computed), the
    hyperparameters against the objective."""
    from tuner.plots import curves_figure, png_bytes

    reasons = dict(zip(frame["trial_id"], frame["end_reason"]))
    out = {"curves.png": png_bytes(curves_figure(trials, reasons, settings))}
    if importance.values:
        out[IMPORTANCE_FILE] = png_bytes(importance_figure(importance))
    out["hyperparams.png"] = png_bytes(hyperparams_figure(frame, settings))
    return out


def _go_line(frame: pd.DataFrame, settings: SearchSettings) -> Optional[float]:
    if settings.metric != "ce_ema" or "chance_ce" not in frame or frame["chance_ce"].isna().all():
        return None
    return settings.go_line(float(frame["chance_ce"].dropna().iloc[0]))


def compare(exp: Experiment | str | Location, rerun_dir: Path) -> tuple[float, int, str, Path]:
    """Largest |ce difference| at matching steps between a re-run folder and the trial it re-runs.

    The trial is the one whose complete config equals the re-run's ``config.json``.
    Returns ``(max_abs_diff, matching_steps, trial_id, compare_png)``.
    """
    metrics_file, config_file = rerun_dir / "metrics.csv", rerun_dir / "config.json"
    if not metrics_file.is_file() or not config_file.is_file():
        raise UserError(
            f"'{rerun_dir}' is not a plain training run folder (needs metrics.csv and config.json); pass the --out "
            "folder of reid-tune train"
        )
    exp = opened(exp)
    settings, exp_dir = exp.settings, exp.path
    rerun_cfg = settings.trial_config(json.loads(config_file.read_text()))  # as the job reads it (old names mapped)
    lineage = exp.lineage()  # PBT: a trial re-runs as its lineage's schedule
    trials = exp.trials()
    trial = next((t for t in trials if export_config(settings, t, lineage) == rerun_cfg and t.rows), None)
    if trial is None:
        raise UserError(
            f"no trial of '{exp_dir}' has the config of '{rerun_dir}'; re-run a trial with "
            f"{settings.rerun_command(exp_dir / 'best_config.json')}"
        )
    rerun = pd.read_csv(metrics_file)
    if rerun.empty:
        raise UserError(f"'{metrics_file}' has no steps yet; let the re-run train first")
    rows = trial.rows
    entry = (lineage or {}).get("trials", {}).get(trial.trial_id)
    if entry is not None:  # every step of its lineage, each from the trial that trained it
        rows = lineage_rows(exp_dir, {t.trial_id: t.path for t in trials}, entry, trial.trial_id) or rows
    ours = pd.DataFrame(rows)[["step", "ce", "ce_ema", "samples"]]
    joined = ours.merge(rerun[["step", "ce"]], on="step", suffixes=("_trial", "_rerun"))
    diff = float((joined["ce_trial"] - joined["ce_rerun"]).abs().max()) if len(joined) else math.nan

    import matplotlib.pyplot as plt

    from tuner.plots import save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(ours["step"], ours["ce"], color="tab:blue", linewidth=2.5, alpha=0.5, label=f"trial {trial.trial_id}")
    ax.plot(rerun["step"], rerun["ce"], color="black", linewidth=0.9, linestyle="--", label=f"re-run {rerun_dir.name}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("identity CE")
    ax.set_title(f"trial vs plain re-run: largest |difference| {diff:.2g} over {len(joined)} steps")
    ax.legend()
    ax.grid(alpha=0.3)
    png = rerun_dir / "compare.png"
    save_figure(fig, png)
    return diff, len(joined), trial.trial_id, png


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", metavar="EXPERIMENT_DIR", help="the folder a search wrote (tune_results/NAME), or its URI (s3://...)")
    p.add_argument("--top", type=int, help="only the N best trials")
    p.add_argument("--reason", help=f"only trials that ended so: {', '.join(END_REASONS)}")
    p.add_argument("--format", choices=TABLE_FORMATS, default="table", help="table (default), csv, json or markdown")
    p.add_argument("--out", metavar="FILE", help="write the table there instead of printing it")
    p.add_argument("--no-plots", action="store_true", help="skip curves.png and hyperparams.png")
    p.add_argument("--compare", metavar="RUN_DIR", help="a reid-tune train --out folder re-running a trial")
    p.add_argument(
        "--html",
        nargs="?",
        const="",
        metavar="FILE",
        help="also write the whole report as one self-contained HTML page to send (default: report.html in the experiment folder)",
    )
    return p


def html_path(exp: Experiment, given: str) -> Location:
    """Where ``--html`` writes: ``given``, else report.html in the experiment; checked before anything is written."""
    if not given:
        return exp / HTML_FILE
    path = Path(given).expanduser()
    if path.is_dir():
        raise UserError(f"--html '{given}' is a folder; pass a file name, e.g. {path / HTML_FILE}")
    if not path.parent.is_dir():
        raise UserError(f"--html '{given}': folder '{path.parent}' does not exist; create it or pass another path")
    return path


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    p = build_parser()
    args = parse_args(p, argv, prog)
    try:
        exp = Experiment.open(args.experiment)  # is it an experiment at all? (before any other complaint)
        exp_dir = exp.path
        if args.reason is not None and args.reason not in END_REASONS:
            raise UserError(f"unknown --reason '{args.reason}'; known: {', '.join(END_REASONS)}")
        if args.top is not None and args.top < 1:
            raise UserError(f"--top is {args.top}, but must be >= 1")
        if args.out and not Path(args.out).parent.is_dir():
            raise UserError(f"--out '{args.out}': folder '{Path(args.out).parent}' does not exist")
        if args.html is not None and args.compare:
            raise UserError("--html writes the experiment's report and --compare checks a re-run; pass one of them")
        page = html_path(exp, args.html) if args.html is not None else None
        if args.compare:
            diff, steps, trial_id, png = compare(exp, Path(args.compare))
            same = steps > 0 and diff <= COMPARE_TOLERANCE
            print(
                f"trial {trial_id} vs re-run {args.compare}: largest |ce difference| {diff:.3g} over {steps} "
                f"matching steps ({'reproduced' if same else 'DIFFERENT'}; tolerance {COMPARE_TOLERANCE:g})"
            )
            print(f"wrote {png}")
            return 0 if same else 1
        notes: list[str] = []
        settings, trials, frame = read_experiment(exp, notes)
    except UserError as err:
        return cli_exit(err, p.prog)
    for note in notes:  # what a crash left unreadable: said, skipped, never fatal
        print(f"note: {note}", file=sys.stderr)

    shown = filtered(frame, args.reason, args.top)
    text = render(shown, args.format)
    if args.out:
        write_text_atomic(args.out, text)
    else:
        sys.stdout.write(text)
    if args.format == "table" and not args.out:
        print(healthy_head_text(shown, trials, settings), end="")
    importance = param_importances(frame, settings)
    account = account_text(frame, settings)
    chatty = args.format == "table" or args.out  # a csv/json/markdown table on stdout stays alone there
    plots = chatty and not args.no_plots and not frame.empty
    drawn = pictures(trials, frame, settings, importance) if not frame.empty and (plots or page is not None) else {}
    if chatty:
        print(account)
        print("\n".join(importance.lines()))
    if plots:
        for name, png in drawn.items():
            write_bytes_atomic(exp_dir / name, png)
        print("wrote " + ", ".join(str(exp_dir / name) for name in drawn))
    if args.out:
        print(f"wrote {args.out}")
    if page is not None:
        best = best_trial(frame, settings) if not frame.empty else None
        write_text_atomic(page, report_html(exp, frame, shown_table(shown), trials, best, importance, drawn, account, notes))
        print(f"wrote {page}", file=sys.stdout if chatty else sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
