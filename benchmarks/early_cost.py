"""What the early verdict (`reid_core.early`) adds to the search's hot path, as a share of a tiny CPU step.

    python benchmarks/early_cost.py [--steps 300] [--repeats 5]

Trains the embedded default (pretrained reid-tiny, batch 32, one thread, CE only) for ``--steps`` steps at a
healthy head LR (the early judge reads every measuring step and never stops it), timing each step. Then
replays the recorded rows through the chance-level rule twice, with the early verdict on and off
(``verdict="window"``), ``--repeats`` times each in alternating order, in CPU time of this thread: the rule's
cost per step with and without the early judge, over the median training step measured in the same run.
The early judge only works before the grace window (300 steps): a whole window is the worst case, and what
the default ``--steps`` measures. Target: < 0.5% of a step (issue 24).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Optional, Sequence

import torch

from common import machine
from reid_core.chance import EARLY, WINDOW, ChanceLevelRule
from reid_core.config import TrainConfig
from reid_core.early import scope
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser
from reid_core.trainer import Trainer

TARGET = 0.005  # of a step


def rule_seconds(rows: list[dict], verdict: str, budget: float, cfg: TrainConfig) -> float:
    """CPU seconds the rule takes over ``rows``, fed one result at a time as the stopper is."""
    rule = ChanceLevelRule(len(rows) * cfg.batch_size + 1, verdict=verdict, budget_samples=budget, scope=scope(cfg.to_dict()))
    started = time.thread_time()
    for row in rows:
        if rule(row) is not None:
            raise RuntimeError(f"the rule stopped the healthy run at step {row['step']}: pick a healthier --set")
    return time.thread_time() - started


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(prog="python benchmarks/early_cost.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps recorded (the grace window: 300)")
    p.add_argument("--repeats", type=int, default=5, help="replays of the rows with each verdict")
    args = p.parse_args(argv)
    if args.steps < 20 or args.repeats < 1:
        return cli_exit(UserError(f"--steps {args.steps}, --repeats {args.repeats}: need steps >= 20, repeats >= 1"), p.prog)
    torch.set_num_threads(1)
    # the edge of learnable (8e-5: crosses the Go line near step 321): above it for the whole window, so the judge reads every measurement
    cfg = TrainConfig(max_steps=450, ce_only_steps=10_000, head_lr=8e-5, threads=1)
    trainer = Trainer(cfg)
    rows, step_s = [], []
    for _ in range(args.steps):
        started = time.thread_time()
        rows.append(trainer.train_step())
        step_s.append(time.thread_time() - started)
    budget = cfg.max_steps * cfg.images_per_step
    early, window = [], []
    for i in range(args.repeats):
        for verdict, into in ((EARLY, early), (WINDOW, window)) if i % 2 == 0 else ((WINDOW, window), (EARLY, early)):
            into.append(rule_seconds(rows, verdict, budget, cfg) / len(rows))
    step = statistics.median(step_s[5:])
    added = statistics.median(early) - statistics.median(window)
    print(f"{machine()}; {args.steps} steps of the default at head_lr 8e-5, batch 32, one thread")
    print(f"training step: {step * 1e3:.1f} ms (median)")
    print(f"rule per step: window only {statistics.median(window) * 1e6:.0f} us, with the early verdict {statistics.median(early) * 1e6:.0f} us")
    print(f"target: the early verdict under {TARGET:.1%} of a step: {added / step:.3%}, {'met' if added / step < TARGET else 'missed'}")
    print(f"early verdict share of a step: {added / step:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
