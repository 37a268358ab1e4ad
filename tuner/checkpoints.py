"""`CheckpointJanitor`: an ended trial's checkpoints deleted unless something still needs them.

Ray keeps the newest few checkpoints of every trial until the experiment is deleted: 8 ViT-B/16 trials
with ``--max-failures`` keep 2 x 1.9 GB each, ~30 GB; and a trial that checkpoints faster than the driver
processes its saves leaves every checkpoint Ray did not register (`tuner._ray_compat.checkpoints`: 8 of 8 kept
at one per 0.25 s, against 2 asked). A running trial keeps its newest ``kept`` and those Ray tracks (Ray deletes
those itself). A checkpoint is needed after its trial ends only

- by the search's winner: the best ended trial so far keeps its newest one (ranked as `tuner.results.best_trial`
  ranks: completed trials before those the scheduler cut, then by ``--metric``), so that the winner's last
  state is there when the search ends;
- by PBT: a trial paused to continue from a copy of another trial's checkpoint restores it when it starts again,
  maybe after the donor has ended; such a checkpoint is held until no unfinished trial's latest is it;
- by ``--resume``: an errored trial restarts from its newest one (kept), an unfinished one from its own (not ended);
- by the user: ``--keep-checkpoints`` keeps every ended trial's newest ``kept``, as Ray would.

So the running trials, not the trial count, decide the disk (`tuner.disk`). Deletions go straight to the
experiment's storage (a folder or a storage URI).
"""

from __future__ import annotations

import math
import posixpath
import shutil
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback
from ray.tune.result import SHOULD_CHECKPOINT

from reid_core.schema import COMPLETED, ERROR
from tuner.disk import folder_bytes, gb
from tuner._ray_compat import registered_checkpoints
from tuner.experiment import Experiment
from tuner.settings import SCHEDULERS
from tuner.storage import Location, StoragePath

CHECKPOINT_PREFIX = "checkpoint_"  # Ray's checkpoint folders in a trial's folder: checkpoint_000000, ...


def checkpoint_folders(trial_dir: Location) -> list[Location]:
    """A trial folder's checkpoints, oldest first (Ray numbers them)."""
    if not trial_dir.is_dir():  # results.csv and the other files beside the trial folders
        return []
    return sorted(p for p in trial_dir.iterdir() if p.name.startswith(CHECKPOINT_PREFIX))


def delete_folder(folder: Location) -> int:
    """Delete ``folder`` and everything in it; returns the bytes freed."""
    size = folder_bytes(folder)
    if isinstance(folder, StoragePath):
        folder.fs.delete_dir(folder.path)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return size


class CheckpointJanitor(Callback):
    """Deletes an ended trial's checkpoints unless the winner, PBT, ``--resume`` or ``--keep-checkpoints`` needs them,
    and a running trial's beyond the ``kept`` newest that Ray never registered (`tuner._ray_compat.checkpoints`).

    ``recorder``: the `tuner.progress.EndReasonRecorder` (before this in the callbacks): why each trial ended and its
    last result. ``kept``: checkpoints kept of a running trial (Ray's ``num_to_keep``, `tuner.disk`).
    """

    def __init__(self, recorder: Any, exp: Experiment, kept: int, keep: bool = False):
        self._recorder = recorder
        self._exp_dir = exp.path
        self._settings = exp.settings
        self._kept = kept
        self._keep = keep
        self.best: Optional[tuple[tuple[int, float], str]] = None  # (rank key, trial folder name) of the best ended trial
        self._held: dict[str, int] = {}  # trial folder -> its `newest`, for folders with checkpoints held for a PBT restore
        self._ended_ids: set[str] = set()  # Ray may tell of one trial's end more than once
        self._rule: dict[str, int] = {}  # ended trial folder -> how many of its newest checkpoints it keeps
        self._trials: list = []  # Ray's trials as last seen (the unfinished ones may restore from an ended one's)
        self.deleted = 0  # checkpoints deleted
        self.deleted_bytes = 0

    # --- Ray's hooks -------------------------------------------------------------------------------

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(SHOULD_CHECKPOINT):  # it has just written one: what Ray will not delete goes
            registered = registered_checkpoints(trial)
            if registered is not None:
                self._tidy(trials, Path(trial.path).name, newest=self._kept, spare=registered)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trials, trial)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._trials = trials
        for name, newest in list(self._held.items()):  # a PBT donor ended: delete what no trial restores from any more
            self._tidy(trials, name, newest)

    # --- the rule --------------------------------------------------------------------------------------

    def _ended(self, trials: list, trial: Any) -> None:
        if trial.trial_id in self._ended_ids:
            return
        self._ended_ids.add(trial.trial_id)
        name = Path(trial.path).name
        reason = self._recorder.reasons.get(trial.trial_id)
        key = self._rank(reason, self._recorder.latest.get(trial.trial_id, {}))
        if self._keep:  # its newest `kept`, as Ray would have left them
            self._rule[name] = self._kept
        elif reason == ERROR:  # --resume restarts it from its newest checkpoint
            self._rule[name] = 1
        elif key is not None and (self.best is None or key < self.best[0]):
            if self.best is not None:
                self._rule[self.best[1]] = 0
                self._tidy(trials, self.best[1], 0)
            self.best = (key, name)
            self._rule[name] = 1
        else:
            self._rule[name] = 0
        self._tidy(trials, name, self._rule[name])

    def _rank(self, reason: Optional[str], last: dict[str, Any]) -> Optional[tuple[int, float]]:
        """Lower is better, as `tuner.results.best_trial` chooses: completed first, then cut; by the metric. None: cannot win."""
        if reason not in (COMPLETED, *SCHEDULERS):
            return None
        value = last.get(self._settings.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return (0 if reason == COMPLETED else 1, value if self._settings.mode == "min" else -value)

    def _tidy(self, trials: list, name: str, newest: int, spare: frozenset[str] | set[str] = frozenset()) -> None:
        """Delete trial ``name``'s checkpoints but its ``newest`` few, ``spare`` and those an unfinished trial restores from."""
        folders = checkpoint_folders(self._exp_dir / name)
        needed = self._restored_from(trials).get(name, set())
        held = False
        for folder in folders[: len(folders) - newest]:
            if folder.name in spare:
                continue
            if folder.name in needed:
                held = True
                continue
            self.deleted_bytes += delete_folder(folder)
            self.deleted += 1
        if held:
            self._held[name] = newest
        else:
            self._held.pop(name, None)

    @staticmethod
    def _restored_from(trials: list) -> dict[str, set[str]]:
        """Trial folder name -> names of its checkpoints that an unfinished other trial will restore from (PBT's copies:
        its latest checkpoint is in another trial's folder)."""
        out: dict[str, set[str]] = {}
        for t in trials:
            checkpoint = t.checkpoint if not t.is_finished() else None
            if checkpoint is None:
                continue
            path = checkpoint.path.rstrip("/")
            donor = posixpath.basename(posixpath.dirname(path))
            if donor != Path(t.path).name:
                out.setdefault(donor, set()).add(posixpath.basename(path))
        return out

    # --- the end of the search -----------------------------------------------------------------------------

    def finish(self, winner: Optional[str]) -> dict[str, Any]:
        """After the exports chose the winner (its trial folder name): a best kept here that is not it goes too.
        Returns the disk in use and freed, for the summary."""
        if not self._keep and self.best is not None and self.best[1] != winner:
            self._rule[self.best[1]] = 0
        # again for every ended trial: a stopped trial may have written one more checkpoint after its verdict
        # (asynchronous reports run up to 0.2 s and a step ahead of the driver: tuner._ray_compat.reporting)
        for name, newest in self._rule.items():
            self._tidy(self._trials, name, newest)
        kept = [c for trial in self._exp_dir.iterdir() for c in checkpoint_folders(trial)] if self._exp_dir.is_dir() else []
        return {
            "experiment_bytes": folder_bytes(self._exp_dir),
            "checkpoint_bytes": sum(folder_bytes(c) for c in kept),
            "checkpoints": len(kept),
            "deleted": self.deleted,
            "deleted_bytes": self.deleted_bytes,
            "kept_all": self._keep,
        }


def disk_line(disk: dict[str, Any], exp_dir: Location) -> str:
    """The summary's disk line."""
    line = f"disk: {gb(disk['experiment_bytes'])} in {exp_dir}"
    if disk["checkpoints"]:
        whose = "all kept (--keep-checkpoints)" if disk["kept_all"] else "the winner's last and any errored trial's newest"
        line += f" ({disk['checkpoints']} checkpoint(s), {gb(disk['checkpoint_bytes'])}: {whose})"
    if disk["deleted"]:
        line += f"; {disk['deleted']} checkpoint(s) no longer needed deleted, {gb(disk['deleted_bytes'])} freed"
    return line



