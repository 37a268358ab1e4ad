"""Repairs: a trial stopped as stuck for a cause a config value fixes comes back with the fix applied.

The chance-level stopper names the cause when it stops a trial (`tuner.stoppers`); for the four causes
with a config fix (`reid_core.repair.FIXABLE`) it sizes the fix from the trial's own rows and writes a
pending repair into the search's `RepairBook` (``repairs-TIME.json`` in the experiment, so a resumed search
neither loses nor repeats one). `RepairingOptunaSearch` proposes pending repairs before new draws: the
same sampled values with the fix applied, enqueued in the Optuna study (so TPE learns from the repaired
trial like any other, a value beyond the space included) and recorded against the new trial's id.

- Repairs do not count inside ``--num-trials``: that many configs are drawn, and each stuck trial with a
  fixable cause may add one repair, so a stuck last trial still gets its repair.
- A repair stuck again for the same cause is not repaired again (the book keys repairs by the first
  trial of the chain and the cause); for another cause it may be.
- Order on a low head LR: ``head_lr_raise`` (opt-in) acts inside a trial first, the early verdict judges
  what it leaves, a repair follows a trial that ended stuck.
- The searcher finishes once every draw was proposed, no repair is pending and no trial is running (the
  `RepairWatch` callback tells it what runs: a running trial may still end stuck and need one).
"""

from __future__ import annotations

import re
import warnings
from datetime import datetime
from typing import Any, Optional

from ray.tune import Callback
from ray.tune.search import Searcher

from reid_core.repair import Fix
from tuner.results import REPAIRS_FILE, read_repairs
from tuner.searchers import PruningOptunaSearch
from tuner.storage import Location, write_json_atomic

FILE = REPAIRS_FILE
BOOKS: dict[str, "RepairBook"] = {}  # experiment path -> its book, in this driver (the searcher finds it here after a resume)


def bounds_of(space: dict[str, str]) -> dict[str, tuple[float, float]]:
    """``key -> (low, high)`` of each numeric searched domain, from its description (``loguniform[1e-06, 0.1]``)."""
    out = {}
    for key, text in space.items():
        numbers = [float(n) for n in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text.split("[", 1)[-1])]
        if numbers:
            out[key] = (min(numbers), max(numbers))
    return out


class RepairBook:
    """The repairs of one search: decided by the stopper, proposed by the searcher, kept in the newest ``repairs-TIME.json``.

    An entry: ``of`` (the stuck trial), ``root`` (the first trial of its chain), ``cause``, ``changes`` (key ->
    value), ``sampled`` (the stuck trial's sampled values), ``why``, ``note`` and ``trial`` (the repair's trial id
    once proposed, else None: pending)."""

    def __init__(self, exp_dir: Location):
        # One file per driver session (repairs-TIME.json), read back newest first: on --resume Ray copies the
        # experiment folder to its staging folder and back at the end, which would put an older copy of one
        # shared file over the newer one; a session's own file it never had a copy of.
        self.path = exp_dir / f"{FILE.removesuffix('.json')}-{datetime.now():%Y%m%d-%H%M%S-%f}.json"
        self.entries: list[dict[str, Any]] = read_repairs(exp_dir)
        self.running = True  # some trial may still end stuck (RepairWatch updates it every step)
        self.checked_resume = False

    def _save(self) -> None:
        write_json_atomic(self.path, self.entries)

    def root_of(self, trial_id: str) -> str:
        entry = self.entry_of(trial_id)
        return entry["root"] if entry else trial_id

    def entry_of(self, trial_id: str) -> Optional[dict[str, Any]]:
        """The entry whose repair is ``trial_id`` (None: not a repair)."""
        return next((e for e in self.entries if e["trial"] == trial_id), None)

    def decide(self, trial_id: str, fix: Fix, sampled: dict[str, Any]) -> bool:
        """A pending repair of ``trial_id``; False when its chain was already repaired for this cause."""
        root = self.root_of(trial_id)
        if any(e["root"] == root and e["cause"] == fix.cause for e in self.entries):
            return False
        self.entries.append({"of": trial_id, "root": root, "cause": fix.cause, "changes": fix.changes, "sampled": sampled,
                             "why": fix.why, "note": fix.note, "trial": None})  # fmt: skip
        self._save()
        return True

    def pending(self) -> Optional[dict[str, Any]]:
        return next((e for e in self.entries if e["trial"] is None), None)

    def proposed(self, entry: dict[str, Any], trial_id: str) -> None:
        entry["trial"] = trial_id
        self._save()

    def resumed(self, trial_ids: set[str]) -> None:
        """After a resume (Ray restores the trials its last saved state held): a repair of a trial it does not hold
        goes (the searcher, restored from the same save, proposes that trial again, and it gets its own repair if
        stuck again); a repair whose own trial it does not hold is pending again."""
        kept = [e for e in self.entries if e["of"] in trial_ids]
        lost = [e for e in kept if e["trial"] is not None and e["trial"] not in trial_ids]
        for entry in lost:
            entry["trial"] = None
        if lost or len(kept) != len(self.entries):
            self.entries = kept
            self._save()
        self.checked_resume = True


class RepairWatch(Callback):
    """Tells the book, at every step of the search's loop, whether a trial still runs (before the searcher is
    asked for the next config), and on the first step of a resumed search which trials it holds."""

    def __init__(self, key: str):
        self._key = key  # the book is found by the experiment's path: Ray pickles callbacks with the experiment

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        book = BOOKS.get(self._key)
        if book is None:
            return
        if not book.checked_resume:
            book.resumed({t.trial_id for t in trials})
        book.running = any(t.status in ("PENDING", "RUNNING", "PAUSED") for t in trials)


class RepairingOptunaSearch(PruningOptunaSearch):
    """`PruningOptunaSearch` that proposes the book's pending repairs first, then ``num_trials`` new draws.

    ``book_key``: the experiment's path, under which the driver puts its `RepairBook` in `BOOKS` (the searcher
    is pickled with the experiment; the book is found again by its key after a resume)."""

    def __init__(self, *args: Any, book_key: str, num_trials: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._book_key = book_key
        self._num_trials = num_trials
        self._drawn = 0

    def suggest(self, trial_id: str) -> Optional[dict]:
        book = BOOKS.get(self._book_key)
        entry = book.pending() if book is not None else None
        if entry is not None:
            return self._repair(book, entry, trial_id)
        if self._drawn < self._num_trials:
            self._drawn += 1
            return super().suggest(trial_id)
        if book is not None and book.running:
            return None  # a running trial may still end stuck and need its repair: ask again later
        return Searcher.FINISHED

    def _repair(self, book: RepairBook, entry: dict[str, Any], trial_id: str) -> dict:
        import optuna

        if self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            self._drawn += 1  # --points-to-evaluate still queued: Optuna proposes them first (its queue is FIFO)
            return super().suggest(trial_id)
        values = {**entry["sampled"], **entry["changes"]}
        searched = {k: v for k, v in values.items() if k in (self._space or {})}
        with warnings.catch_warnings():  # a value beyond the space: Optuna warns, and uses it (the note says so)
            warnings.simplefilter("ignore")
            self.study.enqueue_trial(searched)
            config = super().suggest(trial_id)
        config.update({k: v for k, v in entry["changes"].items() if k not in searched})  # a fixed key, e.g. weight_decay
        book.proposed(entry, trial_id)
        return config
