"""An experiment: where it lives, its settings and its trials, opened once and handed on.

The search makes one (saved once Ray has started: `Experiment.save`) and the driver, the end-reason recorder, PBT's lineage,
the tables, the pictures and the summary all take it; ``reid-tune report``, ``--resume`` and
``reid-tune simulate --from`` open one (`Experiment.open`). Either way the place the user typed is
parsed once (`tuner.storage.location`: a folder, or a URI every node reaches) and the settings
(``reid_tune.json``) are read once. The trials are read from the files each time they are asked for:
the live search and ``reid-tune report`` build their tables from the same files with the same reader.
No Ray, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from reid_core.errors import UserError
from reid_core.schema import RENAMED_METRICS
from tuner.lineage import read_lineage
from tuner.ray_files import TrialFiles, read_trial_folders
from tuner.settings import PBT, SETTINGS_FILE, SearchSettings
from tuner.storage import Location, is_folder, location


@dataclass(frozen=True)
class Experiment:
    path: Location  # the experiment folder: a local Path, or a StoragePath on shared storage
    settings: SearchSettings

    @property
    def name(self) -> str:
        return self.path.name

    def __truediv__(self, name: str) -> Location:
        """A file or trial folder in the experiment (``exp / "results.csv"``)."""
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def open(cls, where: Any, flag: str = "experiment") -> "Experiment":
        """The experiment a search wrote at ``where`` (a folder or a URI); one line naming the problem if it is none."""
        path = location(where, flag)
        if not is_folder(path, flag):
            raise UserError(f"{flag} '{path}' does not exist or is not a folder; pass the folder a search wrote (tune_results/NAME)")
        return cls(path, SearchSettings.load(path))

    def save(self) -> None:
        """Start the experiment on storage (already checked writable): its folder and ``reid_tune.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.settings.save(self.path)

    @property
    def saved(self) -> bool:
        """Whether the experiment is on storage (``--resume`` can continue it)."""
        return (self.path / SETTINGS_FILE).is_file()

    def trials(self, notes: Optional[list[str]] = None) -> list[TrialFiles]:
        """Every trial, its searched values under today's config names and its metrics under today's names; what
        could not be read is skipped and, when ``notes`` is given, named there (one line each)."""
        trials, damage = read_trial_folders(self.path)
        if notes is not None:
            notes.extend(damage)
        for trial in trials:
            trial.sampled = self.settings.sampled(trial.sampled)
            if trial.rows and any(old in trial.rows[0] for old in RENAMED_METRICS):
                trial.rows = [{RENAMED_METRICS.get(k, k): v for k, v in row.items()} for row in trial.rows]
        return trials

    def lineage(self) -> Optional[dict[str, Any]]:
        """A PBT search's record of who copied whom (`tuner.lineage`); None under ASHA."""
        return read_lineage(self.path) if self.settings.scheduler == PBT else None
