"""The checkpoints Ray has registered for a trial: `registered_checkpoints`.

Ray's public ``Trial.checkpoint`` is the newest registered one only; its ``CheckpointConfig(num_to_keep)``
deletes the older registered ones itself, and fails (an error logged, the trial's bookkeeping cut short) when
one is already gone. A trial checkpointing faster than the driver processes its saves (asynchronous,
buffered reports: `tuner._ray_compat.reporting`) leaves checkpoints on storage that Ray never registers and so
never deletes (measured: 2 of 8 registered at one checkpoint per 0.25 s). `tuner.checkpoints.CheckpointJanitor`
deletes those, and must leave the registered ones to Ray.

Ray internals, checked against Ray 2.60.0: ``trial.run_metadata.checkpoint_manager.best_checkpoint_results``
(a list of ``_TrainingResult``, each with ``.checkpoint.path``). Without it: None, and the janitor leaves a
running trial's checkpoints alone (Ray's behaviour: the unregistered ones stay until the trial ends).
"""

from __future__ import annotations

import posixpath
from typing import Any, Optional


def registered_checkpoints(trial: Any) -> Optional[set[str]]:
    """Names (``checkpoint_000003``) of the checkpoints Ray keeps track of for ``trial``; None where Ray's state differs."""
    try:
        results = trial.run_metadata.checkpoint_manager.best_checkpoint_results
        return {posixpath.basename(r.checkpoint.path.rstrip("/")) for r in results if r.checkpoint is not None}
    except AttributeError:
        return None
