"""Ray's W&B callback with one-shot logging actors whose failure is handed to a hook: `WandbLoggerWithFailureHook`.

Ray logs each trial to W&B from a small actor on the driver's node. Ray internals, checked against
Ray 2.60.0 (``ray.air.integrations.wandb.WandbLoggerCallback``):

- ``_start_logging_actor`` overridden: before Ray's method runs, Ray's actor class
  (``_logger_actor_cls``) is made remote into ``_remote_logger_class`` as Ray does (no CPU, on this
  node by ``ray.air.util.node._force_on_current_node``, the API key passed on), but with
  ``max_restarts=0``. Ray makes it restartable (https://github.com/ray-project/ray/pull/37709), and
  its constructor takes the trial's queue (an actor handle): Ray 2.60 then prints an error-level
  line on the terminal once per driver (https://github.com/ray-project/ray/issues/53727). A restart
  could not resume the trial's ``wandb.init`` anyway.
- ``_cleanup_logging_actor`` overridden to look at the actor's future (``_trial_logging_futures``)
  before Ray drops it: an actor that failed (``wandb.init`` refused, no network online) goes to
  `on_logging_failed`, which Ray has no equivalent of (it drops the error).
- ``__del__``: Ray's runs at interpreter exit too, when its module globals are already gone.

Where any of these differs: Ray's own W&B logging (restartable actors, the error line once per
driver), and a trial whose W&B run failed is not reported; its results are in the experiment
folder all the same.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.air.integrations.wandb import WANDB_ENV_VAR, WandbLoggerCallback

try:
    from ray.air.util.node import _force_on_current_node
except ImportError:  # another Ray: its own actor options (restartable)
    _force_on_current_node = None


class WandbLoggerWithFailureHook(WandbLoggerCallback):
    """``WandbLoggerCallback`` whose logging actors are not restarted, and whose failures reach `on_logging_failed`."""

    def on_logging_failed(self, trial: Any, error: BaseException) -> None:
        """``trial``'s logging actor ended with ``error`` (a ``RayTaskError``, its cause the actor's own exception,
        or the actor's death); Ray would drop it. Called at most once per trial."""

    def _start_logging_actor(self, trial: Any, exclude_results: Any, **wandb_init_kwargs: Any) -> None:
        actor_cls = getattr(self, "_logger_actor_cls", None)
        if _force_on_current_node is not None and actor_cls is not None and not getattr(self, "_remote_logger_class", True):
            options = {"num_cpus": 0, **_force_on_current_node(), "max_restarts": 0}
            if WANDB_ENV_VAR in os.environ:  # else no runtime_env: the actor may start in one of Ray's idle workers
                options["runtime_env"] = {"env_vars": {WANDB_ENV_VAR: os.environ[WANDB_ENV_VAR]}}
            self._remote_logger_class = ray.remote(**options)(actor_cls)
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)  # Ray's method does the rest

    def _cleanup_logging_actor(self, trial: Any) -> None:
        futures = getattr(self, "_trial_logging_futures", None)
        future = futures.get(trial) if isinstance(futures, dict) else None
        if future is not None and not ray.wait([future], timeout=0)[1]:  # finished: it may have raised
            try:
                ray.get(future)
            except Exception as err:  # RayTaskError (the actor's own exception as its cause) or the actor died
                self.on_logging_failed(trial, err)
        super()._cleanup_logging_actor(trial)

    def __del__(self) -> None:
        try:
            super().__del__()
        except (AttributeError, TypeError):  # at interpreter exit Ray's module globals are already gone
            pass
