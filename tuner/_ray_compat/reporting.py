"""Per-step reporting that costs ~0.5 ms, not ~3 ms: `FastReporting`, the trial trainables' mixin.

Ray internals, checked against Ray 2.60.0:

- ``ray.train._internal.session.get_session().synchronous_result_reporting`` set to False (no public
  switch; Ray Train's own workers set it). Without it (the module or the attribute gone): reporting
  stays synchronous, Ray's default: ~3 ms a step instead of ~0.5 ms, the same results.
- ``Trainable.train_buffered`` overridden (a public method, but Ray 2.60's
  ``TuneController._schedule_trial_train`` passes its arguments swapped: ``train_buffered(buffer_length,
  buffer_time_s)`` into ``(buffer_time_s, max_buffer_length)``, so every batch ended after one result).
  Ours ignores what it is passed; a Ray that stops calling it (no buffering) just reports one result
  a call: slower, still correct.
- The mixin reaches the trainable through the function's ``__mixins__`` attribute, which Ray's
  ``wrap_function`` reads: `with_fast_reporting` sets it on the trainables (`tuner.trainable`,
  `tuner.simulation.trainable`). A Ray that ignores it runs the plain function trainable: synchronous,
  unbuffered.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, TypeVar

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



Fn = TypeVar("Fn", bound=Callable[..., Any])


def with_fast_reporting(fn: Fn) -> Fn:
    """``fn`` as a function trainable with `FastReporting` mixed in (Ray's undocumented ``__mixins__`` hook,
    read by ``ray.tune.trainable.function_trainable.wrap_function`` in Ray 2.60)."""
    fn.__mixins__ = (FastReporting,)  # type: ignore[attr-defined]
    return fn
