"""A trainable that replays a parametric learning curve without training: the driver's load, none of the trials'.

Reports one result per step, as ``tuner.trainable.train_trial`` does, with the
same fast reporting, so a real Ray search of thousands of these trials measures
what the driver (Tune's controller, the scheduler, the chance-level rule, the
searcher, the result logger) sustains: ``benchmarks/driver_rate.py``. It lives
in the package because Ray's workers import trainables by name.
"""

from __future__ import annotations

import zlib
from typing import Any

from ray import tune

from tuner.simulation.curves import Family
from tuner._ray_compat import with_fast_reporting


@with_fast_reporting
def replay_trial(sampled: dict[str, Any], max_steps: int, batch_size: int = 32, seed: int = 0) -> None:
    """Report the family's curve of ``sampled`` (its noise seeded by the config) step by step, at once."""
    key = zlib.crc32(repr(sorted(sampled.items())).encode())
    curve = Family(batch_size=batch_size).curve(sampled, max_steps, (seed, key))
    for i, samples in enumerate(curve.samples):
        tune.report(
            {"step": i + 1, "samples": samples, "ce": curve.ce[i], "ce_ema": curve.ce_ema[i], "chance_ce": curve.chance_ce}
        )


