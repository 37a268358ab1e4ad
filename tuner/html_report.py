"""``reid-tune report EXP --html [FILE]``: the experiment as one page to send a colleague.

One self-contained HTML file: the summary, the winner's re-run command, the pictures (curves, importance,
hyperparameters) embedded as ``data:`` URIs, each stuck trial's cause with its evidence, fix and the
healthy head's reference, the compute account and the per-trial table. No script, no stylesheet or font
fetched, no link out: it opens the same offline, in a mail client's preview, or archived years later.
No Ray, no torch.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime
from typing import Any, Optional

import pandas as pd

from reid_core.diagnostics import UNKNOWN, Diagnosis
from reid_core.schema import STUCK
from tuner.experiment import Experiment
from tuner.importance import Importance
from tuner.results import stuck_diagnoses
from tuner.summary import summary_lines

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
pre, code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.9em; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } tr.stuck_at_chance td { background: #fff1f0; } tr.winner td { background: #eefbea; }
.pictures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.pictures img { max-width: 100%; border: 1px solid #eee; }
.stuck { border-left: 4px solid #d9534f; padding: 0.2em 1em; margin: 1em 0; background: #fffafa; }
.muted { color: #666; font-size: 0.85em; } .wide { overflow-x: auto; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value))


def stuck_section(frame: pd.DataFrame, trials: list, exp: Experiment) -> str:
    """Each stuck trial: its cause, what that means, the evidence, the fix, and its head beside a healthy one."""
    stuck = frame[frame["end_reason"] == STUCK] if not frame.empty else frame
    if stuck.empty:
        return "<p>No trial was stuck at chance.</p>"
    found: dict[str, Diagnosis] = stuck_diagnoses(trials, frame, exp.settings)
    parts = []
    for _, row in stuck.iterrows():
        d = found.get(row["trial_id"])
        cause = d.cause if d else (row.get("stuck_cause") or UNKNOWN)
        searched = ", ".join(f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in exp.settings.space)
        body = [f"<h3>trial {_e(row['trial_id'])}: <code>{_e(cause)}</code></h3>", f"<p class='muted'>{_e(searched)}; stopped at step {_e(row['steps'])}</p>"]
        if d is None:
            body.append("<p>No head metrics were reported: no evidence, so no cause is named.</p>")
        else:
            body.append(f"<p>{_e(d.meaning)}</p><p><b>evidence:</b> {_e(d.evidence)}</p><p><b>fix:</b> {_e(d.fix)}</p>")
            if d.reference:
                body.append(f"<p><b>its head vs a healthy head:</b> {_e(d.reference)}</p>")
            if d.ruled_out:
                body.append("<ul>" + "".join(f"<li>not {_e(r)}</li>" for r in d.ruled_out) + "</ul>")
        parts.append("<div class='stuck'>" + "".join(body) + "</div>")
    return "\n".join(parts)


def table_html(shown: pd.DataFrame, winner: Optional[str]) -> str:
    """The per-trial table (the columns `tuner.report.render` prints), each row classed by its end reason."""
    head = "".join(f"<th>{_e(c)}</th>" for c in shown.columns)
    rows = []
    for _, row in shown.iterrows():
        cls = "winner" if row.get("trial_id") == winner else str(row.get("end_reason", ""))
        cells = "".join(f"<td>{_e(_cell(v))}</td>" for v in row)
        rows.append(f"<tr class='{_e(cls)}'>{cells}</tr>")
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def report_html(
    exp: Experiment,
    frame: pd.DataFrame,
    shown: pd.DataFrame,
    trials: list,
    best: Optional[pd.Series],
    importance: Importance,
    pictures: dict[str, bytes],
    account: str,
    notes: list[str],
) -> str:
    """The page. ``shown``: the table as the report prints it; ``pictures``: file name -> PNG bytes, in order."""
    settings = exp.settings
    winner = str(best["trial_id"]) if best is not None else None
    rerun = settings.rerun_command(exp / "best_config.json")
    sections = [
        f"<h1>reid-tune report: {_e(exp.name)}</h1>",
        f"<p class='muted'>{_e(exp.path)}; written {datetime.now():%Y-%m-%d %H:%M}; searched "
        f"{_e(', '.join(f'{k} {v}' for k, v in settings.space.items()))}; metric {_e(settings.metric)} ({_e(settings.mode)})</p>",
        "<h2>Summary</h2>",
        "<pre>" + _e("\n".join(summary_lines(frame, settings, best, importance))) + "</pre>",
    ]
    if winner is not None:
        sections += ["<h2>Re-run the winner</h2>", f"<p>trial {_e(winner)}, without Ray:</p><pre><code>{_e(rerun)}</code></pre>"]
    if settings.optuna_study:
        sections.append(f"<p>Optuna study <code>{_e(exp.name)}</code> in <code>{_e(settings.optuna_study)}</code>.</p>")
    if pictures:
        images = "".join(f"<figure><img alt='{_e(name)}' src='{data_uri(png)}'><figcaption class='muted'>{_e(name)}</figcaption></figure>"
                         for name, png in pictures.items())  # fmt: skip
        sections += ["<h2>Curves and what mattered</h2>", f"<div class='pictures'>{images}</div>"]
    sections += ["<h2>Trials stuck at chance</h2>", stuck_section(frame, trials, exp)]
    sections += ["<h2>Compute</h2>", f"<p>{_e(account)}</p>"]
    sections += ["<h2>Every trial</h2>", table_html(shown, winner) if not shown.empty else "<p>(no trials)</p>"]
    if notes:
        sections += ["<h2>What could not be read</h2>", "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>reid-tune report: {_e(exp.name)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
