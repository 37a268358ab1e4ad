"""``--scheduler pbt``: Ray Tune's PopulationBasedTraining, acting where trials checkpoint, recording lineages.

`LineagePBT` is Ray 2.60's asynchronous PBT, its time axis the perturbation round (`tuner.lineage.pbt_round`:
thresholds in images seen, the same for every accumulation), with three changes:

- **It acts only at a result that carries a checkpoint.** A function trainable's ``save`` hands back
  the checkpoint of its last reported result: at a result without one, Ray's PBT skips the exploit
  ("no checkpoint for trial") and a trial it pauses to let others run restarts from an older state.
  Trials checkpoint at the first step of each round (`tuner.lineage.perturbation_due`), where PBT
  looks; this only keeps a drift from costing anything.
- **A perturbed value stays in the space**: clipped to its domain's bounds (a ``choice`` domain is
  passed as Ray's list, which shifts to a neighbouring value instead).
- **Every exploit is recorded** with the step of the checkpoint copied (``pbt_lineage.json``,
  `tuner.lineage`), from which the winner's LR schedule is exported. Ray has no hook there:
  `tuner._ray_compat.PBTWithExploitHook` makes one (`on_exploit`); on a Ray whose internals differ
  from 2.60's, PBT runs as Ray's and no lineage is recorded.

Defaults, and why: the burn-in is the chance-level rule's grace window, so every sampled config is
judged as sampled (a stuck one is stopped and named, not silently replaced by a copy of a good one);
perturbation factors 2 and 0.5 (the seed team's "5e-3, then 1e-2" is one such step; Ray's 1.2/0.8
would hardly move an LR in the 2-3 perturbation rounds the default budget leaves after the window);
Ray's quantile (a quarter) and resample probability (0.25).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np
from ray.tune.result import SHOULD_CHECKPOINT
from ray.tune.schedulers import TrialScheduler

from search_spaces import Domain, to_tune
from tuner._ray_compat import PBTWithExploitHook
from tuner.disk import KEPT_PBT
from tuner.lineage import LINEAGE_FILE, empty_record, pbt_round, read_lineage
from tuner.storage import Location, write_json_atomic

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

ROUND = "pbt_round"  # PBT's time attribute, added to the results it looks at
PERTURBATION_FACTORS = (2.0, 0.5)
QUANTILE_FRACTION = 0.25  # Ray's default: the bottom quarter copies the top quarter
RESAMPLE_PROBABILITY = 0.25  # Ray's default: a quarter of perturbations draw afresh from the domain
CHECKPOINTS_KEPT = KEPT_PBT  # per trial (why: tuner.disk, which plans the disk with it)


class _ClipToSpace:
    """Ray's ``custom_explore_fn``: a perturbed value is put back inside its domain's bounds."""

    def __init__(self, bounds: Mapping[str, tuple[float, float]]):
        self.bounds = dict(bounds)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (low, high) in self.bounds.items():
            config[key] = min(max(config[key], low), high)
        return config


class _Redraw:
    """A range's resample for Ray's PBT (a callable there): a fresh value from the domain, drawn from a generator
    seeded by ``--seed`` (Ray draws a Tune domain's from NumPy's global, unseeded one)."""

    def __init__(self, domain: Any, seed: int):
        self.domain = domain
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> float:
        return float(self.domain.sample(random_state=self.rng))


def mutations(space: Mapping[str, Domain], seed: int = 0) -> dict[str, Any]:
    """Ray's ``hyperparam_mutations`` for the perturbed fields: a choice as its list (Ray shifts to a neighbour), a
    range as a seeded redraw (Ray multiplies by a perturbation factor, or calls it to resample)."""
    out: dict[str, Any] = {}
    for i, (key, d) in enumerate(space.items()):
        out[key] = list(d.args) if d.kind == "choice" else _Redraw(to_tune({key: d})[key], seed + i)
    return out


class LineagePBT(PBTWithExploitHook):
    """PopulationBasedTraining on rounds of images seen that acts at checkpoints and records each trial's lineage.

    Args:
        exp_dir: the experiment folder (or storage URI); ``pbt_lineage.json`` is written there.
        perturbed: the searched fields PBT changes mid-run, with their domains (`tuner.lineage.PERTURBABLE`).
        burn_in: images seen before PBT first acts (the grace window).
        interval: images seen between two looks at one trial.
        seed: seeds the redraws (the rest of PBT's choices come from Python's ``random``, seeded by the driver).
    """

    def __init__(
        self, exp_dir: Location, perturbed: Mapping[str, Domain], burn_in: float, interval: float, seed: int = 0, **kwargs: Any
    ):
        if not perturbed:
            raise ValueError("The value of `perturbed` is empty, but PBT needs a field to perturb.")
        bounds = {k: (min(d.args[:2]), max(d.args[:2])) for k, d in perturbed.items() if d.kind != "choice"}
        super().__init__(
            time_attr=ROUND,  # one round = `interval` images; round 1 starts at the burn-in
            perturbation_interval=1,
            burn_in_period=1,
            hyperparam_mutations=mutations(perturbed, seed),
            custom_explore_fn=_ClipToSpace(bounds),
            quantile_fraction=QUANTILE_FRACTION,
            resample_probability=RESAMPLE_PROBABILITY,
            perturbation_factors=PERTURBATION_FACTORS,
            **kwargs,
        )
        self._exp_dir = exp_dir
        self._burn_in, self._interval = burn_in, interval
        self._perturbed = list(perturbed)
        self._record: Optional[dict[str, Any]] = None  # loaded on first use: a resumed search continues its file
        self._deciding: dict[str, Any] = {}  # the result being looked at

    @property
    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = read_lineage(self._exp_dir) or empty_record(self._perturbed)
        return self._record

    def _save(self) -> None:
        write_json_atomic(self._exp_dir / LINEAGE_FILE, self.record)

    def on_trial_add(self, tune_controller: Any, trial: "Trial") -> None:
        super().on_trial_add(tune_controller, trial)
        if trial.trial_id not in self.record["trials"]:
            self.record["trials"][trial.trial_id] = {"initial": self._values(trial.config), "changes": []}
            self._save()

    def on_trial_result(self, tune_controller: Any, trial: "Trial", result: dict[str, Any]) -> str:
        if not result.get(SHOULD_CHECKPOINT):  # nothing a copy or a pause could continue from
            return TrialScheduler.CONTINUE
        self._deciding = result
        result[ROUND] = pbt_round(result["samples"], self._burn_in, self._interval)  # the scheduler's copy of the result
        decision = super().on_trial_result(tune_controller, trial, result)
        # Ray 2.60 with buffered results (tuner._ray_compat.FastReporting): after an exploit PBT has paused the
        # trial itself and says NOOP, but the CONTINUE an earlier result of the same batch queued still runs and
        # schedules training on the stopped actor (KeyError in TuneController._schedule_trial_train). PAUSE
        # overrides the queued CONTINUE, and pausing a trial already paused is a no-op.
        return TrialScheduler.PAUSE if decision == TrialScheduler.NOOP and trial.status == "PAUSED" else decision

    def on_exploit(
        self, tune_controller: Any, trial: "Trial", trial_to_clone: "Trial", copied_result: dict[str, Any], old_config: dict[str, Any]
    ) -> None:
        """Record the exploit: ``trial`` continues ``trial_to_clone``'s lineage from the copied checkpoint's step."""
        old = self._values(old_config)
        new = self._values(trial.config)
        trials = self.record["trials"]
        source = trials.get(trial_to_clone.trial_id) or {"initial": self._values(trial_to_clone.config), "changes": []}
        change = {
            "step": copied_result["step"],
            "samples": copied_result["samples"],
            "from": trial_to_clone.trial_id,
            "into": trial.trial_id,
            "values": new,
        }
        earlier = [c for c in source["changes"] if c["step"] <= copied_result["step"]]
        trials[trial.trial_id] = {"initial": dict(source["initial"]), "changes": [*earlier, change]}
        self.record["exploits"].append(
            {
                "trial": trial.trial_id,
                "cloned": trial_to_clone.trial_id,
                "step": copied_result["step"],
                "samples": copied_result["samples"],
                "at_step": self._deciding.get("step"),
                "old": old,
                "new": new,
            }
        )
        self._save()

    def _values(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {k: config.get(k) for k in self._perturbed}

    def debug_string(self) -> str:
        return f"LineagePBT: {len(self.record['exploits'])} exploits; " + super().debug_string()
