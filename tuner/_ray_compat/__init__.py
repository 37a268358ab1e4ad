"""Where the harness reaches into Ray's private API: fenced here, dated, each piece with a fallback.

Every use of a ``ray._private`` or ``ray.train._internal`` module, a private ``ray.air`` helper, or
an underscore attribute or method of a Ray object (read, written or overridden) is in this package;
the rest of `tuner` uses the public names below. Each module says what it touches, why Ray's public
API does not serve, the upstream issue where there is one, and what happens on a Ray where the
internals differ: Ray's public behaviour (slower or a worse search, still correct), never a crash.

Checked against Ray `RAY_CHECKED` (2.60.0); `TESTED_RAY` is pyproject.toml's range, and
`check_ray_version` prints one note line when the installed Ray is outside it.

=================  =================================================  ==========================================
module             what it gives the rest of tuner                    without Ray's internals
=================  =================================================  ==========================================
``reporting``      `with_fast_reporting`, `FastReporting`: per-step   synchronous reporting, ~3 ms a step
                   reports cost ~0.5 ms
``logs``           `JsonLogger`: a restarted trial keeps its rows;    Ray's: rows since the last sync lost;
                   `quiet_ray_logs`: Ray's needless lines silenced    the lines show
``optuna_search``  `optuna_handles`, `optuna_study`: the optuna       early stops told to TPE as completed
                   objects behind Ray's OptunaSearch
``pbt``            `PBTWithExploitHook`: ``on_exploit`` after each    PBT as Ray's, no lineage recorded
                   exploit, with the copied checkpoint's result
``wandb_logger``   `WandbLoggerWithFailureHook`: one-shot logging     Ray's actors; a failed W&B run not said
                   actors, ``on_logging_failed``
``mlflow_logger``  `mlflow_batching`, `mlflow_run`: the run Ray       one MLflow call per metric (slower)
                   opened for a trial, and its client
``checkpoints``    `registered_checkpoints`: the checkpoints Ray      a running trial's unregistered
                   tracks (the janitor leaves them to Ray)            checkpoints stay until it ends
``version``        `check_ray_version`, `RAY_CHECKED`, `TESTED_RAY`   (no Ray internals)
=================  =================================================  ==========================================

All but ``wandb_logger`` are importable from here. ``wandb_logger`` is imported from its module, and only
where ``--wandb`` asks for it: Ray's W&B integration imports ``wandb`` (1.5-2 s), which every trial
process would pay if this package imported it.
"""

from __future__ import annotations

from tuner._ray_compat.checkpoints import registered_checkpoints
from tuner._ray_compat.logs import JsonLogger, quiet_ray_logs
from tuner._ray_compat.mlflow_logger import mlflow_batching, mlflow_run
from tuner._ray_compat.optuna_search import optuna_handles, optuna_study
from tuner._ray_compat.pbt import PBTWithExploitHook
from tuner._ray_compat.reporting import RESULT_BUFFER_LENGTH, RESULT_BUFFER_S, FastReporting, with_fast_reporting
from tuner._ray_compat.version import RAY_CHECKED, TESTED_RAY, check_ray_version

__all__ = [
    "FastReporting",
    "JsonLogger",
    "PBTWithExploitHook",
    "RAY_CHECKED",
    "RESULT_BUFFER_LENGTH",
    "RESULT_BUFFER_S",
    "TESTED_RAY",
    "check_ray_version",
    "mlflow_batching",
    "mlflow_run",
    "optuna_handles",
    "optuna_study",
    "quiet_ray_logs",
    "registered_checkpoints",
    "with_fast_reporting",
]
