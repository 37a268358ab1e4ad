"""The healthy head's reference values (`reid_core.diagnostics.HEALTHY_HEAD`): re-measure them.

Trains the embedded default (pretrained reid-tiny, 400 identities, 300 steps) at four healthy head LRs
and three seeds, one thread each, and prints the min-max of head_weight_change, head_grad_norm and
logit_std at each reference step, in the form the table holds. ~12 s a run, ~2.5 min in all.

    python benchmarks/healthy_head.py
"""

from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

from reid_core.config import TrainConfig
from reid_core.diagnostics import REFERENCE_METRICS
from reid_core.trainer import Trainer

HEAD_LRS = (1e-3, 3e-3, 7.8e-3, 1e-2)
SEEDS = (0, 1, 2)
STEPS = (25, 50, 100, 150, 300)


def main(argv: Optional[Sequence[str]] = None) -> int:
    started = time.perf_counter()
    at: dict[int, list[dict]] = {s: [] for s in STEPS}
    for seed in SEEDS:
        for head_lr in HEAD_LRS:
            trainer = Trainer(TrainConfig(head_lr=head_lr, seed=seed, threads=1))
            rows = [trainer.train_step() for _ in range(trainer.cfg.max_steps)]
            for step in STEPS:
                at[step].append(rows[step - 1])
    print("HEALTHY_HEAD = {")
    for step, rows in at.items():
        ranges = ", ".join(f'"{m}": ({min(r[m] for r in rows):.3g}, {max(r[m] for r in rows):.3g})' for m in REFERENCE_METRICS)
        print(f"    {step}: {{{ranges}}},")
    print("}")
    print(f"{len(HEAD_LRS) * len(SEEDS)} runs in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
