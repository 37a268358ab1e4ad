"""Ray's PopulationBasedTraining with a public hook at every exploit: `PBTWithExploitHook`.

Ray has no callback for "trial A now continues from trial B's checkpoint with a perturbed config",
which `tuner.pbt.LineagePBT` needs to record who copied whom and from which step.

Ray internals, checked against Ray 2.60.0: ``PopulationBasedTraining._exploit(tune_controller, trial,
trial_to_clone)`` is overridden, and ``_trial_state[trial_to_clone].last_result`` read (the result the
copied checkpoint was saved with: its ``step`` and ``samples``). Where either differs, PBT runs as
Ray's and `on_exploit` is not called: `LineagePBT` records no lineage, so the exported winner holds
its last config without its schedule. One warning says so (at construction where ``_exploit`` is
gone; at the exploit where the state is).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ray.tune.schedulers import PopulationBasedTraining

from tuner._ray_compat.version import RAY_CHECKED

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)


def _checkpoint_result(scheduler: PopulationBasedTraining, trial: "Trial") -> Optional[dict[str, Any]]:
    """The result ``trial``'s last checkpoint was saved with (a copy), or None where Ray's state differs."""
    states = getattr(scheduler, "_trial_state", None)
    state = states.get(trial) if isinstance(states, Mapping) else None
    result = getattr(state, "last_result", None)
    return dict(result) if isinstance(result, Mapping) and "step" in result else None


class PBTWithExploitHook(PopulationBasedTraining):
    """``PopulationBasedTraining`` that calls `on_exploit` after each exploit (arguments as Ray's PBT)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not callable(getattr(PopulationBasedTraining, "_exploit", None)):
            logger.warning("PBT: Ray's internals differ from %s; no trial's lineage is recorded", RAY_CHECKED)

    def on_exploit(
        self, tune_controller: Any, trial: "Trial", trial_to_clone: "Trial", copied_result: dict[str, Any], old_config: dict[str, Any]
    ) -> None:
        """``trial`` now continues from ``trial_to_clone``'s checkpoint, with the perturbed ``trial.config``.

        Args:
            copied_result: the result that checkpoint was saved with (``step``, ``samples``, ...).
            old_config: ``trial``'s config before the exploit.
        """

    def _exploit(self, tune_controller: Any, trial: "Trial", trial_to_clone: "Trial") -> None:
        copied = _checkpoint_result(self, trial_to_clone)
        old_config = dict(trial.config)
        super()._exploit(tune_controller, trial, trial_to_clone)
        if copied is None:
            logger.warning("PBT: Ray's internals differ from %s; the lineage of trial %s is not recorded", RAY_CHECKED, trial.trial_id)
            return
        self.on_exploit(tune_controller, trial, trial_to_clone, copied, old_config)
