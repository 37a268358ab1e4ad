"""``--wandb``: every trial's per-step results in Weights & Biases, through Ray Tune's own W&B callback.

One W&B run per trial (id = the trial's id, name = the trial's name, config = its searched values),
grouped by the experiment's name, in the project the user named. Ray's callback logs each trial
from a small actor on the driver's node (``wandb.init`` there, its files in the experiment's
``wandb/`` folder, `reid_core.dashboards.wandb_folder`), every result at its
``training_iteration``, which is our optimizer step: one report per step.

Imports Ray: import it only where Ray may be imported (`tuner.driver` builds the callbacks).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ray
from ray.air.integrations.wandb import WANDB_ENV_VAR, WandbLoggerCallback
from ray.air.util.node import _force_on_current_node

from reid_core.dashboards import WANDB_SETTINGS, wandb_folder


class WandbTrialLogger(WandbLoggerCallback):
    """Ray's ``WandbLoggerCallback`` with W&B's mode decided before Ray started (`reid_core.dashboards.wandb_mode`).

    Ray's ``setup`` looks for an API key in every mode unless ``WANDB_MODE`` is set in the driver's
    environment, and through ``wandb.api``, which wandb 0.31 deprecates with a warning: offline
    (the default without a key) it would refuse to start. The search has already checked that an
    online mode has a key, and each trial's ``wandb.init`` reads it as W&B does (``WANDB_API_KEY``
    is passed on to the actors by Ray; `wandb login`'s .netrc is on the same node). So: nothing to set up.
    """

    _told = False  # a trial's failed W&B run was reported (once per search)

    def setup(self, *args, **kwargs) -> None:
        return None

    def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs) -> None:
        # Ray makes the per-trial logging actor restartable, and its constructor takes the trial's queue (an
        # actor handle): Ray 2.60 then prints an error-level line on the terminal once per driver
        # (ray-project/ray#53727). A restart could not resume the trial's wandb.init anyway; the same actor
        # class otherwise (no CPU, on this node, the API key passed on), and Ray's method does the rest.
        if not self._remote_logger_class:
            options = {"num_cpus": 0, **_force_on_current_node(), "max_restarts": 0}
            if WANDB_ENV_VAR in os.environ:  # else no runtime_env: the actor may start in one of Ray's idle workers
                options["runtime_env"] = {"env_vars": {WANDB_ENV_VAR: os.environ[WANDB_ENV_VAR]}}
            self._remote_logger_class = ray.remote(**options)(self._logger_actor_cls)
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    def _cleanup_logging_actor(self, trial) -> None:
        # Ray drops a logging actor's error (wandb.init refused, no network online): say it once per search,
        # or the user would find out only on W&B's site.
        future = self._trial_logging_futures[trial]
        if not self._told and not ray.wait([future], timeout=0)[1]:
            try:
                ray.get(future)
            except Exception as err:  # RayTaskError (the actor's own exception as its cause) or the actor died
                cause = getattr(err, "cause", None) or err
                first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
                print(f"W&B: trial {trial.trial_id} was not logged ({type(cause).__name__}: {first}); its results are "
                      "in the experiment folder all the same; further W&B failures of this search are not repeated",
                      file=sys.stderr, flush=True)  # fmt: skip
                self._told = True
        super()._cleanup_logging_actor(trial)

    def __del__(self) -> None:
        try:
            super().__del__()
        except (AttributeError, TypeError):  # at interpreter exit Ray's module globals are already gone
            pass


def wandb_callback(project: str, exp_dir, mode: str) -> WandbTrialLogger:
    """The callback for an experiment at ``exp_dir`` (a local folder, or a `tuner.storage.StoragePath`)."""
    folder: Path = wandb_folder(exp_dir)
    return WandbTrialLogger(
        project=project,
        group=exp_dir.name,
        mode=mode,
        dir=str(folder),
        resume="allow",  # a resumed search (--resume) continues a trial's W&B run online; offline ignores it
        # no system charts: Ray runs every trial's logging actor on the driver's node, so they would show that
        # machine, not the trial's (and one sampling process per trial on it)
        settings={**WANDB_SETTINGS, "x_disable_stats": True},
    )
