"""Ray's logs: the ``result.json`` logger that keeps a restarted trial's rows, and Ray's lines we silence.

Ray internals, checked against Ray 2.60.0:

- `JsonLogger` overrides ``JsonLoggerCallback._restore_from_remote``. Ray's copies ``result.json`` back
  from storage at every trial start, but within one ``fit`` the driver's staging copy is the newest
  and storage only gets it now and then: a trial paused and restarted (PBT does it at every
  perturbation point, a retry once) lost the rows written since the last sync (measured: a PBT
  trial's steps 1-40 gone). The copy back is kept for what it is for, a new driver (``--resume``),
  whose staging folder starts empty. A Ray without the method never calls ours: Ray's behaviour,
  a restarted trial's file can miss the rows since the last sync.
- `quiet_ray_logs` filters records of named Ray loggers, two of them in ``ray._private``
  (`QUIET`). A renamed logger or message just shows again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune.logger import JsonLoggerCallback


class JsonLogger(JsonLoggerCallback):
    """``JsonLoggerCallback`` whose restarted trials append to the driver's own ``result.json`` (see the module)."""

    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        local = getattr(trial, "local_path", None)
        if local is not None and Path(local, file_name).is_file():  # this driver's copy: the newest there is
            return
        super()._restore_from_remote(file_name, trial)  # a new driver: continue the copy in storage


class _DropMessages(logging.Filter):
    """Drops a logger's records that start with one of ``prefixes`` (and, when given, contain ``marker``)."""

    def __init__(self, *prefixes: str, marker: str = ""):
        super().__init__()
        self._prefixes = prefixes
        self._marker = marker

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith(self._prefixes) and self._marker in text)


# Ray's lines that tell a user of this command nothing, or that we say better ourselves (checked
# against Ray 2.60; a renamed logger or message just shows again). Its real warnings still show.
# Per logger: (the messages' beginnings, a marker the message must also contain, or "").
QUIET: dict[str, tuple[tuple[str, ...], str]] = {
    # local clusters turn token auth on by default since 2.59; the notice repeats at every start
    "ray._private.authentication.authentication_token_setup": (("Token authentication is enabled for this Ray cluster",), ""),
    # Ctrl-C: we print one line saying how to resume instead of these two
    "ray.tune.tune": (("Stop signal received", "Experiment has been interrupted"), ""),
    # a trial interrupted before its first report has no result file yet: not an error
    "ray.tune.analysis.experiment_analysis": (("Failed to fetch metrics",), ""),
    # trial checkpoints (--max-failures) with buffered results: Ray's advice on its own bookkeeping
    "ray.tune.execution.experiment_state": (("Experiment state snapshotting has been triggered",), ""),
    "ray.tune.execution.tune_controller": (("Trial ",), "has a non-training future scheduled"),
    # a batch call the controller had already sent when the trial's function returned (buffered
    # reporting, tuner._ray_compat.reporting): its error is about a finished trial and nobody waits for it
    "ray._private.worker": (("Unhandled error",), "Should not have reached here"),
}


def quiet_ray_logs() -> None:
    """Silence `QUIET`'s lines in this process (once: calling it again adds nothing)."""
    for name, (prefixes, marker) in QUIET.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(*prefixes, marker=marker))
