"""What the user sees (a line per finished trial, a status line now and then, the summary), and the record of
why each trial ended, written when it is decided."""

from __future__ import annotations

import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from reid_core.actions import HALT_EXIT
from reid_core.ending import end_reason
from reid_core.errors import INTERRUPTED
from reid_core.pace import LoaderWatch
from reid_core.schema import ERROR, HALTED, UNFINISHED
from tuner.checkpoints import CheckpointJanitor, disk_line
from tuner.experiment import Experiment
from tuner.importance import FILE as IMPORTANCE_FILE
from tuner.importance import importance_png, param_importances
from tuner.plots import curves_png
from tuner.ray_files import END_REASON_FILE
from tuner.results import write_exports
from tuner.settings import SearchSettings
from tuner.summary import fmt, summary_lines
from tuner.storage import Location, StoragePath, write_json_atomic


class EndReasonRecorder(Callback):
    """Records why each trial ended, when the driver decides it: ``end_reason.json`` in the trial's folder,
    written atomically, straight to the experiment's storage (Ray uploads its own files from the driver's
    staging folder later). The tables read the record; replaying the curve is only the fallback for
    experiments without one, so a curve a crash cut short cannot re-label a trial."""

    def __init__(self, stopper, exp: Experiment):
        self._stopper = stopper
        self._settings = exp.settings
        self._exp_dir = exp.path
        self.latest: dict[str, dict[str, Any]] = {}  # trial_id -> its last result
        self.reasons: dict[str, str] = {}  # trial_id -> why it ended, for the trials that have

    @property
    def _live(self):
        """The stopper Ray runs (on --resume not the one pickled with this callback: `tuner.stoppers.live`)."""
        from tuner.stoppers import live

        return live(self._stopper, str(self._exp_dir))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.latest[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        reason = end_reason(
            verdict=self._live.reasons.get(trial.trial_id),
            last=self.latest.get(trial.trial_id, {}),
            max_samples=self._settings.max_samples,
            stopped=True,
            scheduler=self._settings.scheduler,
            halted=self._live.stop_all(),
        )
        self._live.forget(trial.trial_id)
        self._record(trial, reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, ERROR)

    def on_experiment_end(self, trials, **info):
        """The trials a halted search stopped before they ended by themselves (Ray reports no end for them)."""
        if not self._live.stop_all():
            return
        for trial in trials:
            if trial.trial_id not in self.reasons and trial.status != "ERROR":
                self._live.forget(trial.trial_id)
                self._record(trial, HALTED)

    def _record(self, trial, reason: str) -> None:
        self.reasons[trial.trial_id] = reason
        last = self.latest.get(trial.trial_id, {})
        # Straight into the trial's folder in the experiment's storage: Ray writes its own files to a staging
        # folder on the driver and copies them there now and then, so the folder may not be there yet.
        folder = self._exp_dir / Path(trial.path).name
        if not isinstance(folder, StoragePath):
            folder.mkdir(parents=True, exist_ok=True)
        record = {"trial_id": trial.trial_id, "end_reason": reason, "step": last.get("step", 0), "samples": last.get("samples", 0)}
        write_json_atomic(folder / END_REASON_FILE, record)


class ProgressPrinter(Callback):
    """Prints one line when a trial ends (with why, from the recorder) and a status line every ``every_s`` seconds."""

    def __init__(self, recorder: EndReasonRecorder, settings: SearchSettings, quiet: bool = False, every_s: float = 15.0):
        self._recorder = recorder
        self._settings = settings
        self._quiet = quiet
        self._every_s = every_s
        self._last_status = time.monotonic()
        self._loader: Optional[dict[str, LoaderWatch]] = {}  # per trial, until one says the loader is the bottleneck

    def _say(self, text: str) -> None:
        if not self._quiet:
            print(text, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self._loader is not None:  # the first trial whose steps wait for their images says so, once a search
            slow = self._loader.setdefault(trial.trial_id, LoaderWatch())(result)
            if slow:
                self._loader = None
                print(f"trial {trial.trial_id}: {slow}", flush=True)  # also with --quiet: it costs GPU hours
        now = time.monotonic()
        if now - self._last_status >= self._every_s:
            self._last_status = now
            running = [t for t in trials if t.status == "RUNNING"]
            latest = self._recorder.latest.values()
            best = min((r["ce_ema"] for r in latest if math.isfinite(r.get("ce_ema", math.nan))), default=None)
            best_txt = f"best ce_ema {best:.3f}" if best is not None else "no result yet"
            ended = len(self._recorder.reasons)
            self._say(f"[{len(trials)} started, {ended} ended, {len(running)} running] {best_txt}")

    def _ended_line(self, trial) -> None:
        reason = self._recorder.reasons.get(trial.trial_id, UNFINISHED)
        last = self._recorder.latest.get(trial.trial_id, {})
        params = ", ".join(f"{k}={fmt(trial.config.get(k))}" for k in self._settings.space)
        where = f"step {last.get('step', 0)}, ce_ema {last.get('ce_ema', math.nan):.3f}" if last else "no step"
        self._say(f"trial {trial.trial_id} {reason:<15} {where}  ({params})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended_line(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended_line(trial)


def resume_line(exp_dir: Location) -> str:
    storage = shlex.quote(str(exp_dir.parent))  # a URI's query holds '&': quoted, the line pastes into a shell
    return f"resume with: reid-tune search --resume --name {exp_dir.name} --storage-path {storage}"


def summarise(exp: Experiment, wall_s: float, janitor: Optional[CheckpointJanitor] = None, halt: Optional[str] = None) -> int:
    """Write the exports, print the summary; exit code 3 when the search stopped itself (``halt``: its one line,
    `reid_core.actions.halt_message`, printed last on stderr), 130 when it was interrupted before every trial
    ended (Ctrl-C), else 1 when some trials failed, else 0. ``janitor``: the search's, told the winner (its other
    kept checkpoints go) and asked the disk in use."""
    exp_dir = exp.path
    exports = write_exports(exp)
    frame, settings, best = exports["frame"], exports["settings"], exports["best"]
    disk = janitor.finish(None if best is None else best["trial_dir"]) if janitor is not None else None
    reasons = dict(zip(frame["trial_id"], frame["end_reason"])) if not frame.empty else {}
    curves_png(exports["trials"], reasons, settings, exp_dir / "curves.png")
    importance = param_importances(frame, settings)

    print()
    for line in summary_lines(frame, settings, best, importance, wall_s):
        print(line)
    errors = frame[frame["end_reason"] == ERROR] if not frame.empty else frame
    if disk is not None:
        print(disk_line(disk, exp_dir))
    written = [exp_dir / "results.csv", exp_dir / "curves.png"]
    if importance_png(importance, exp_dir / IMPORTANCE_FILE):
        written.append(exp_dir / IMPORTANCE_FILE)
    if exports["best_config"] is not None:
        written.append(exports["best_config"])
    print("wrote " + ", ".join(str(p) for p in written))
    if exports["best_config"] is not None:
        config = exports["best_config"] if isinstance(exp_dir, Path) else "best_config.json"  # copied from the URI first
        print(f"re-run the winner: {settings.rerun_command(config)}")
    if halt is not None:
        print(halt, file=sys.stderr, flush=True)
        return HALT_EXIT
    unfinished = int((frame["end_reason"] == UNFINISHED).sum()) if not frame.empty else 0
    if unfinished or len(frame) < settings.num_trials:
        print(f"interrupted with {settings.num_trials - len(frame) + unfinished} of {settings.num_trials} trials unfinished; {resume_line(exp_dir)}")
        return INTERRUPTED
    return 1 if len(errors) else 0
