"""What a search is: its settings (`SearchSettings`, the file ``reid_tune.json``).

Written by ``tuner.search`` before the first trial and read back by every other part: the
driver, ``--resume`` (which continues with the settings the experiment started with, whatever
the flags say now), the result tables and pictures. What depends on the training function
(ours or a user's: its config, its images per step, its re-run command) is asked of its
`reid_core.job.Job`, ``settings.job``. Every budget is in images (``samples``). Pure: no Ray, no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, Optional

from reid_core.chance import WINDOW, go_line
from reid_core.early import scope
from reid_core.errors import UserError
from reid_core.job import Job, job_for
from reid_core.schema import EVAL_METRICS
from tuner.storage import Location, write_json_atomic

SETTINGS_FILE = "reid_tune.json"  # in the experiment folder, beside Ray's files
PBT = "pbt"
SCHEDULERS = ("asha", PBT)  # --scheduler: the default, and tuner.pbt; also the end reason of a trial it stopped
SEARCHERS = ("optuna", "random")  # --searcher: TPE (the default under asha), or random draws (under pbt)
RENAMED_SETTINGS = {"num_samples": "num_trials"}  # keys of experiments written before 0.2
DROPPED_SETTINGS = ("trend_samples",)  # always None then; the rule's trend window is half the grace window


def rule_keywords(base: Mapping[str, Any], verdict: str, budget_samples: float, trainable: bool,
                  config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:  # fmt: skip
    """The chance-level rule's keywords for a trial of ``config`` over ``base``: `SearchSettings.rule_keywords`."""
    return {"verdict": verdict, "budget_samples": budget_samples, "scope": scope({**base, **(config or {})}, trainable=trainable)}


@dataclass(frozen=True)
class SearchSettings:
    base: dict[str, Any]  # the config every trial starts from (ours: TrainConfig.to_dict(), its max_steps the budget at its accumulation)
    space: dict[str, str]  # searched key -> its domain as written, e.g. 'loguniform[1e-06, 0.1]'
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
    # The training function (reid_core.contract): a user's 'package.module:function', or None for ours
    # (reid_core.train:train). Its reid_core.job.Job knows its config, its budget unit and its re-run.
    trainable: Optional[str] = None
    trainable_root: Optional[str] = None  # the folder holding its top-level package, put on the workers' sys.path
    threads: int = 0  # torch threads of each trial (= its CPUs)
    scheduler: str = "asha"  # 'asha' (RecheckingASHA cuts) or 'pbt' (tuner.pbt: PBT after the grace window)
    searcher: str = "optuna"  # who proposes the configs: 'optuna' (TPE) or 'random' (Ray's random draws; always under pbt)
    perturbation_interval: int = 0  # pbt: images seen between two looks at a trial (0 under asha)
    # images per optimizer step at the base config: the unit --max-steps, --grace-steps and --perturbation-interval
    # count in (0: not recorded, in experiments from before 0.3)
    images_per_step: float = 0.0
    keep_checkpoints: bool = False  # keep every ended trial's checkpoints (default: the winner's last; tuner.checkpoints)
    # --optuna-storage: the database URL (password hidden) holding the search's Optuna study, named after the
    # experiment (tuner.optuna_storage); None: the study lived in the driver's memory only
    optuna_study: Optional[str] = None
    # when the chance-level rule may say stuck: 'early' (reid_core.early, from the evidence; the default of searches
    # since 0.5) or 'window' (the seed's window only: every experiment written before, which was judged so)
    verdict: str = WINDOW
    first_rung_samples: int = 0  # ASHA's first rung, images (--first-rung-steps); 0: at the grace window
    # run every trial whatever the stuck verdicts say (--keep-going; experiments written before 0.6 ran so); else the
    # search stops itself once its stuck trials agree on a cause no searched value fixes (reid_core.actions)
    keep_going: bool = True
    # a trial stopped as stuck for a cause a config value fixes gets a repaired sibling (--repair; tuner.repairs);
    # Optuna searches under ASHA only
    repair: bool = False

    @property
    def rung_samples(self) -> int:
        """Images seen at ASHA's first rung: the grace window unless --first-rung-steps moved it."""
        return self.first_rung_samples or self.grace_samples

    @cached_property
    def job(self) -> Job:
        """The training function's `Job`: what differs between ours and a user's."""
        return job_for(self.trainable, self.trainable_root)

    def trial_config(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's complete config."""
        return self.job.trial_config(self.base, sampled)

    def sampled(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's searched values (Ray's params.json) under the config's names of today."""
        return {self.job.key(k): v for k, v in values.items()}

    def rule_keywords(self, config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """`reid_core.chance.ChanceLevelRule`'s keywords for a trial of ``config`` (default: the base config): the
        verdict, the budget, and the early verdict's scope (our function on a calibrated model, an LR not meant to
        change)."""
        return self.rule_keywords_of()(config)

    def rule_keywords_of(self) -> Callable[[Optional[Mapping[str, Any]]], dict[str, Any]]:
        """`rule_keywords` as a picklable function of a trial's config (for the stopper Ray ships to its workers)."""
        return functools.partial(rule_keywords, self.base, self.verdict, self.max_samples, self.trainable is not None)

    def rerun_command(self, config_file: str | Location = "best_config.json") -> str:
        return self.job.rerun_command(config_file)

    def rerun_settings(self) -> dict[str, Any]:
        """What a plain re-run needs besides the config (best_config.json keeps it): which function, and the
        search's budget, grace window and margin in images, so it is judged where its trial was."""
        budget = {"max_samples": self.max_samples, "grace_samples": self.grace_samples, "chance_margin": self.chance_margin,
                  "verdict": self.verdict}  # fmt: skip
        return {**self.job.exported(), "search": {**budget, "threads": self.threads}}

    @property
    def perturbed(self) -> list[str]:
        """The searched fields PBT changes mid-run (none under ASHA)."""
        return [k for k in self.space if k in self.job.perturbable] if self.scheduler == PBT else []

    @property
    def evaluates_at_rungs(self) -> bool:
        """A retrieval metric is measured at every ASHA rung, where ASHA compares trials by it."""
        return self.metric in EVAL_METRICS

    def go_line(self, chance_ce: float) -> float:
        return go_line(chance_ce, self.chance_margin)

    def save(self, exp_dir: Location) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        write_json_atomic(exp_dir / SETTINGS_FILE, values)

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
        job = job_for(out.get("trainable"), out.get("trainable_root"))
        out["base"] = job.trial_config(out["base"], {})  # old field names mapped, defaults filled (ours)
        out["space"] = {job.key(k): v for k, v in out["space"].items()}
        return cls(**out)

    @classmethod
    def load(cls, exp_dir: Location) -> "SearchSettings":
        path = exp_dir / SETTINGS_FILE
        if not path.is_file():
            raise UserError(f"'{exp_dir}' is not a reid-tune experiment (no {SETTINGS_FILE}); pass the folder a search wrote")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(
                f"'{path}' is damaged ({first}); restore it from a backup, or start a new search with --name"
            ) from None
