"""What a search is: its settings (`SearchSettings`, the file ``reid_tune.json``) and each trial's config.

Written by ``tuner.search`` before the first trial and read back by every other part: the
driver, ``--resume`` (which continues with the settings the experiment started with, whatever
the flags say now), the result tables and pictures. Pure: no Ray, no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from reid_core.chance import go_line
from reid_core.config import TrainConfig, canonical_key
from reid_core.errors import UserError
from reid_core.schema import ASHA, COMPLETED, DIVERGED, ERROR, EVAL_METRICS, UNFINISHED
from tuner.lineage import PERTURBABLE
from tuner.storage import Location, location, write_json_atomic

SETTINGS_FILE = "reid_tune.json"  # in the experiment folder, beside Ray's files
PBT = "pbt"
SCHEDULERS = ("asha", PBT)  # --scheduler: the default, and tuner.pbt
SEARCHERS = ("optuna", "random")  # --searcher: TPE (the default under asha), or random draws (under pbt)
RENAMED_SETTINGS = {"num_samples": "num_trials"}  # keys of experiments written before 0.2
DROPPED_SETTINGS = ("trend_samples",)  # always None then; the rule's trend window is half the grace window


@dataclass(frozen=True)
class SearchSettings:
    base: dict[str, Any]  # the base TrainConfig every trial starts from (TrainConfig.to_dict()); its max_steps is the budget at accumulation 1
    space: dict[str, str]  # searched field -> its domain as written, e.g. 'loguniform[1e-06, 0.1]'
    metric: str  # what Optuna and ASHA optimise (ce_ema, or a retrieval metric such as val_r1)
    mode: str  # 'min' or 'max' for metric
    grace_samples: int  # images seen before the chance-level rule and ASHA's first rung judge a trial
    chance_margin: float  # Go line = log(C) - chance_margin
    max_samples: int  # images a trial may see: the budget
    num_trials: int  # trials the searcher proposes
    reduction_factor: float  # ASHA: a rung keeps the best 1/reduction_factor of its trials
    seed: int = 0  # seeds the searcher (trial seeds come from the base config)
    max_failures: int = 0  # retries of a failed trial, from its last checkpoint
    checkpoint_every: int = 0  # optimizer steps between trial checkpoints; 0 = none
    inject_fault: Optional[dict[str, Any]] = None  # testing hook {"step", "key", "value"}: see tuner.trainable
    # A user's training function (reid_core.contract), or None for reid_core's own job. With one,
    # `base` is the user's own config mapping and `space` names its keys; the budget is in images.
    trainable: Optional[str] = None  # 'package.module:function'
    trainable_root: Optional[str] = None  # the folder holding its top-level package, put on the workers' sys.path
    threads: int = 0  # torch threads of each user trial (= its CPUs); reid_core's trials take the base config's
    scheduler: str = "asha"  # 'asha' (RecheckingASHA cuts) or 'pbt' (tuner.pbt: PBT after the grace window)
    searcher: str = "optuna"  # who proposes the configs: 'optuna' (TPE) or 'random' (Ray's random draws; always under pbt)
    perturbation_interval: int = 0  # pbt: images seen between two looks at a trial (0 under asha)

    @property
    def base_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.base)

    def trial_config(self, sampled: Mapping[str, Any]) -> TrainConfig | dict[str, Any]:
        """A trial's complete config: a `TrainConfig`, or for a user's function its own mapping."""
        if self.trainable:
            return {**self.base, **sampled}
        return trial_config(self.base, sampled)

    def trial_max_steps(self, sampled: Mapping[str, Any]) -> Optional[int]:
        """A trial's budget in optimizer steps; None for a user's function (its budget is `max_samples`)."""
        return None if self.trainable else trial_config(self.base, sampled).max_steps

    def rerun_command(self, config_file: str | Path = "best_config.json") -> str:
        if self.trainable:
            return f"reid-tune run --trainable {self.trainable} --config {config_file} --out DIR"
        return f"reid-tune train --config {config_file} --out DIR"

    def rerun_settings(self) -> dict[str, Any]:
        """What a plain re-run of a user's function needs besides its config (best_config.json keeps it)."""
        if not self.trainable:
            return {}
        budget = {"max_samples": self.max_samples, "grace_samples": self.grace_samples, "chance_margin": self.chance_margin}
        return {"trainable": self.trainable, "search": {**budget, "threads": self.threads}}

    @property
    def perturbed(self) -> list[str]:
        """The searched fields PBT changes mid-run (none under ASHA)."""
        return [k for k in self.space if k in PERTURBABLE] if self.scheduler == PBT else []

    @property
    def evaluates_at_rungs(self) -> bool:
        """A retrieval metric is measured at every ASHA rung, where ASHA compares trials by it."""
        return self.metric in EVAL_METRICS

    def go_line(self, chance_ce: float) -> float:
        return go_line(chance_ce, self.chance_margin)

    def save(self, exp_dir: str | Location) -> None:
        write_json_atomic(location(exp_dir) / SETTINGS_FILE, dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SearchSettings":
        """From what ``reid_tune.json`` holds, old names mapped to today's."""
        known = {f.name for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        for key, value in values.items():
            key = RENAMED_SETTINGS.get(key, key)
            if key in known:
                out[key] = value
            elif key not in DROPPED_SETTINGS:
                raise ValueError(f"unknown search setting '{key}'")
        if not out.get("trainable"):  # a user's config has the user's keys, never renamed
            out["base"] = TrainConfig.from_dict(out["base"]).to_dict()  # old field names mapped, defaults filled
            out["space"] = {canonical_key(k): v for k, v in out["space"].items()}
        return cls(**out)

    @classmethod
    def load(cls, exp_dir: str | Location) -> "SearchSettings":
        path = location(exp_dir, "experiment") / SETTINGS_FILE
        if not path.is_file():
            raise UserError(f"'{exp_dir}' is not a reid-tune experiment (no {SETTINGS_FILE}); pass the folder a search wrote")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(
                f"'{path}' is damaged ({first}); restore it from a backup, or start a new search with --name"
            ) from None


def settings_from_flags(args: Any, **values: Any) -> SearchSettings:
    """The search's settings: what every search takes from its flags, plus ``values`` (base, space,
    budgets in images, ...) that depend on the kind of search (ours, or a user's --trainable)."""
    return SearchSettings(
        metric=args.metric,
        mode=args.mode,
        chance_margin=args.chance_margin,
        num_trials=args.num_trials,
        reduction_factor=args.reduction_factor,
        seed=args.seed,
        max_failures=args.max_failures,
        scheduler=args.scheduler,
        searcher=args.searcher or ("random" if args.scheduler == PBT else "optuna"),
        **values,
    )


def sampled_values(sampled: Mapping[str, Any], own_keys: bool = False) -> dict[str, Any]:
    """A trial's searched values (Ray's params.json) under today's field names (``own_keys``: a user's, as is)."""
    return dict(sampled) if own_keys else {canonical_key(k): v for k, v in sampled.items()}


def trial_config(base: TrainConfig | Mapping[str, Any], sampled: Mapping[str, Any]) -> TrainConfig:
    """The trial's complete config: the search's base config plus the sampled values.

    ``base.max_steps`` is the budget in optimizer steps *at the base's accumulation*: a trial
    with ``grad_accum_steps=k`` trains for ``ceil(max_steps * base_accum / k)`` steps, so every
    trial may see the same number of images and trials compare at equal compute.
    """
    base_cfg = base if isinstance(base, TrainConfig) else TrainConfig.from_dict(base)
    cfg = TrainConfig.from_dict(sampled, base=base_cfg)
    steps = math.ceil(base_cfg.max_steps * base_cfg.grad_accum_steps / cfg.grad_accum_steps)
    return TrainConfig.from_dict({"max_steps": max(1, steps)}, base=cfg)


def end_reason(
    *,
    failed: bool,
    verdict: Optional[str],
    last: Mapping[str, Any],
    max_steps: Optional[int],
    terminated: bool,
    max_samples: Optional[float] = None,
) -> str:
    """Why a trial ended: the one place this is decided, live (the driver) and from files (the tables).

    ``failed``: the trial raised (and was not retried to success); ``verdict``: the chance-level
    rule's reason (``stuck_at_chance`` or ``diverged``), if it stopped the trial; ``last``: the
    trial's last result; ``max_steps``: its budget in optimizer steps (None for a user's function,
    whose budget is ``max_samples`` images); ``terminated``: Ray ended it (stopped or done) rather
    than it still running or being interrupted.
    """
    if failed:
        return ERROR
    if verdict is not None:
        return verdict
    if last:
        ce = last.get("ce", math.nan)
        if not (math.isfinite(ce) and math.isfinite(last.get("loss", ce))):  # a user's function may report no loss
            return DIVERGED  # the training job's own NaN stop
        if max_steps is not None and last.get("step", 0) >= max_steps:
            return COMPLETED
        if max_steps is None and max_samples is not None and last.get("samples", 0) >= max_samples:
            return COMPLETED
    return ASHA if terminated else UNFINISHED
