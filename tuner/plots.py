"""Pictures of a search: ce_ema curves against images seen, each stopped trial marked by its reason."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from reid_core.schema import ASHA, COMPLETED, DIVERGED, ERROR, STUCK, UNFINISHED  # noqa: E402
from tuner.ray_files import TrialFiles  # noqa: E402
from tuner.settings import SearchSettings  # noqa: E402
from tuner.storage import Location, write_bytes_atomic  # noqa: E402

# How each end reason is drawn at the curve's last point.
REASON_STYLE = {
    COMPLETED: ("o", "tab:green"),
    ASHA: ("v", "tab:orange"),
    STUCK: ("X", "tab:red"),
    DIVERGED: ("*", "tab:purple"),
    ERROR: ("s", "black"),
    UNFINISHED: (">", "tab:gray"),
}


def curves_png(trials: list[TrialFiles], reasons: dict[str, str], settings: SearchSettings, path: str | Location) -> None:
    """`curves_figure`, written atomically."""
    save_figure(curves_figure(trials, reasons, settings), path)


def curves_figure(trials: list[TrialFiles], reasons: dict[str, str], settings: SearchSettings):
    """``ce_ema`` against samples per trial, with the log(C) and Go lines."""
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    chance = None
    for trial in trials:
        rows = [r for r in trial.rows if math.isfinite(r["ce_ema"])]
        if not rows:
            continue
        chance = rows[-1]["chance_ce"]
        reason = reasons.get(trial.trial_id, UNFINISHED)
        marker, colour = REASON_STYLE.get(reason, ("o", "gray"))
        xs, ys = [r["samples"] for r in rows], [r["ce_ema"] for r in rows]
        ax.plot(xs, ys, color=colour, alpha=0.55, linewidth=1.2)
        ax.plot(xs[-1], ys[-1], marker=marker, color=colour, markersize=8, linestyle="none")
    if chance is not None:
        ax.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"chance log(C) = {chance:.2f}")
        go = settings.go_line(chance)
        ax.axhline(go, color="tab:blue", linestyle=":", linewidth=1.2, label=f"Go line = {go:.2f}")
    ax.axvline(settings.grace_samples, color="gray", linestyle="-.", linewidth=0.8, label="grace window")
    for reason, (marker, colour) in REASON_STYLE.items():
        if reason in reasons.values():
            ax.plot([], [], marker=marker, color=colour, linestyle="none", label=reason)
    ax.set_xlabel("training images seen (samples)")
    ax.set_ylabel("identity CE (ce_ema)")
    ax.set_title(f"{len(trials)} trials: identity CE against compute")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes (the HTML report embeds them); the figure is closed."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: str | Location) -> None:
    """Write ``fig`` as a PNG atomically (a crash never leaves half a picture; also on an object store) and close it."""
    write_bytes_atomic(path, png_bytes(fig))
