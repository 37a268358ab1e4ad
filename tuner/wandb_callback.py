"""``--wandb``: every trial's per-step results in Weights & Biases, through Ray Tune's own W&B callback.

One W&B run per trial (id = the trial's id, name = the trial's name, config = its searched values),
grouped by the experiment's name, in the project the user named. Ray's callback logs each trial
from a small actor on the driver's node (``wandb.init`` there, its files in the experiment's
``wandb/`` folder, `reid_core.dashboards.wandb_folder`), every result at its
``training_iteration``, which is our optimizer step: one report per step.

Imports Ray: import it only where Ray may be imported (`tuner.driver` builds the callbacks).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from reid_core.dashboards import WANDB_SETTINGS, wandb_folder
from tuner._ray_compat.wandb_logger import WandbLoggerWithFailureHook


class WandbTrialLogger(WandbLoggerWithFailureHook):
    """Ray's ``WandbLoggerCallback`` with W&B's mode decided before Ray started (`reid_core.dashboards.wandb_mode`).

    Ray's ``setup`` looks for an API key in every mode unless ``WANDB_MODE`` is set in the driver's
    environment, and through ``wandb.api``, which wandb 0.31 deprecates with a warning: offline
    (the default without a key) it would refuse to start. The search has already checked that an
    online mode has a key, and each trial's ``wandb.init`` reads it as W&B does (``WANDB_API_KEY``
    is passed on to the actors by Ray; `wandb login`'s .netrc is on the same node). So: nothing to set up.

    Its logging actors are not restarted, and a failed one is said once per search
    (`tuner._ray_compat.wandb_logger.WandbLoggerWithFailureHook`).
    """

    _told = False  # a trial's failed W&B run was reported (once per search)

    def setup(self, *args, **kwargs) -> None:
        return None

    def on_logging_failed(self, trial: Any, error: BaseException) -> None:
        # Ray drops a logging actor's error (wandb.init refused, no network online): say it once per search,
        # or the user would find out only on W&B's site.
        if self._told:
            return
        cause = getattr(error, "cause", None) or error
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        print(f"W&B: trial {trial.trial_id} was not logged ({type(cause).__name__}: {first}); its results are "
              "in the experiment folder all the same; further W&B failures of this search are not repeated",
              file=sys.stderr, flush=True)  # fmt: skip
        self._told = True


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
