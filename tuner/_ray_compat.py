"""Where the harness reaches into Ray's private API: fenced here, dated, each with a fallback.

Checked against Ray 2.60. Each piece names what it touches, why the public API does not serve,
and what happens when the attribute is gone in another Ray version (the public behaviour:
slower, still correct).

- `FastReporting`: asynchronous, buffered per-step reporting for the function trainable.
  Touches ``ray.train._internal.session.get_session().synchronous_result_reporting`` (no public
  switch; Ray Train's own workers set it) and overrides ``Trainable.train_buffered`` because
  Ray 2.60's ``TuneController._schedule_trial_train`` passes its arguments swapped
  (``train_buffered(buffer_length, buffer_time_s)`` into ``(buffer_time_s, max_buffer_length)``),
  so every batch ended after one result.
- `JsonLogger`: Ray's ``JsonLoggerCallback`` that keeps the driver's own ``result.json`` when a trial
  restarts. Ray's copies the file back from storage at every trial start (``_restore_from_remote``),
  but within one ``fit`` the driver's staging copy is the newest and storage only gets it now and
  then: a trial paused and restarted (PBT does it at every perturbation point, a retry once) lost the
  rows written since the last sync (measured: a PBT trial's steps 1-40 gone). The copy back is kept
  for what it is for, a new driver (``--resume``), whose staging folder starts empty.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from ray.tune.logger import JsonLoggerCallback
from ray.tune.result import DONE, RESULT_DUPLICATE, SHOULD_CHECKPOINT

RESULT_BUFFER_S = 0.2  # seconds a trial's actor collects results before the driver gets them together
RESULT_BUFFER_LENGTH = 1000  # results per batch at most


class FastReporting:
    """Mixin for the trial's function trainable (Ray's ``__mixins__`` hook): reports that cost ~0.5 ms.

    Every optimizer step is one ``tune.report``. Out of the box, a Ray function trainable
    reports synchronously: after each report the training thread waits until the driver has
    processed the result and asked the actor for the next one, ~3 ms here, every step
    (``benchmarks/harness_overhead.py``). Two changes, neither of which drops a result:

    - **Asynchronous reporting**, as Ray Train's own workers do: the training thread goes on with
      the next step as soon as the actor has taken its result, instead of when the driver asks
      for the next. A trial runs at most one step ahead of the results the driver has judged.
    - **Result buffering** (``TUNE_RESULT_BUFFER_LENGTH`` > 1, which ``tuner.search`` sets): the
      actor collects results for ``RESULT_BUFFER_S`` and the driver processes them in order, each
      one logged and judged by the stoppers and ASHA as before; a trial stopped at a result keeps
      no later one. Ray 2.60's controller calls ``train_buffered(buffer_length, buffer_time_s)``
      while the method takes ``(buffer_time_s, max_buffer_length)``; with the two swapped every
      batch ends after its first result, so ``train_buffered`` below uses ``RESULT_BUFFER_S`` and
      ``RESULT_BUFFER_LENGTH`` whatever it is passed. A batch also ends at a checkpoint (Ray's
      rule), so no checkpoint is ahead of the results the driver has seen.

    Together: a stopped trial computes up to ``RESULT_BUFFER_S`` plus one step past its verdict,
    and those steps are dropped. Where a Ray version lacks the session flag, reporting stays
    synchronous: slower, still correct.
    """

    def setup(self, config: dict[str, Any]) -> None:
        super().setup(config)  # type: ignore[misc]  # FunctionTrainable.setup opens the session
        self._pending_error: Optional[Exception] = None  # raised by the next train_buffered call
        try:
            from ray.train._internal.session import get_session
        except ImportError:  # a Ray without this private module: synchronous reporting, Ray's default
            return
        session = get_session()
        if session is not None and hasattr(session, "synchronous_result_reporting"):
            session.synchronous_result_reporting = False

    def train_buffered(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Ray's ``Trainable.train_buffered`` loop with our bounds, and no result lost to an error.

        Ray's loop loses the batch collected so far when the trial raises; here the batch goes to
        the driver first and the error is raised by the next call, so a failed trial's
        ``result.json`` ends at its last good step.
        """
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        results: list[dict[str, Any]] = []
        send_at = time.time() + RESULT_BUFFER_S
        while not results or time.time() < send_at:
            try:
                result = self.train()  # type: ignore[attr-defined]
            except Exception as err:
                if not results:
                    raise
                self._pending_error = err
                break
            results.append(result)
            if (
                result.get(DONE, False)
                or result.get(SHOULD_CHECKPOINT, False)
                or result.get(RESULT_DUPLICATE)
                or len(results) >= RESULT_BUFFER_LENGTH
            ):
                break
        return results


class JsonLogger(JsonLoggerCallback):
    """``JsonLoggerCallback`` whose restarted trials append to the driver's own ``result.json`` (see the module)."""

    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        local = getattr(trial, "local_path", None)
        if local is not None and Path(local, file_name).is_file():  # this driver's copy: the newest there is
            return
        super()._restore_from_remote(file_name, trial)  # a new driver: continue the copy in storage
