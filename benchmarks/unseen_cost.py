"""What the unseen-image CE (`reid_core.unseen.UnseenCE`) costs per optimizer step, as a share of the tiny model's step.

    python benchmarks/unseen_cost.py [--steps 100] [--warmup 5] [--config FILE] [--set key=value ...]

Trains the default config (reid-tiny, shipped weights, 64x32 images, batch 32, 400 synthetic identities with one
image each held out, one thread, CE-only phase held) with `Trainer.train_step`. Steps run in adjacent pairs, in
alternating order: one that measures ``unseen_ce`` (a forward of the fixed held-out batch, `UNSEEN_BATCH` images,
eval mode, no grad) and one that does not, in CPU time of the training thread (``time.thread_time``: other
processes on a shared machine do not count), as `benchmarks/monitor_cost.py` times the head monitor. The median
paired difference is what one measurement adds to its step; it is made once in ``unseen_every`` steps (the config
field), so the added share is that difference / unseen_every / the median step without. Target: within the head
monitor's budget, < 1% of a step (BENCHMARKS.md section 7).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Optional, Sequence

import torch

from common import machine, step_cost_trainer
from reid_core.errors import UserError, cli_exit

TARGET = 0.01  # of a step: the head monitor's budget


def main(argv: Optional[Sequence[str]] = None) -> int:
    made = step_cost_trainer("python benchmarks/unseen_cost.py", __doc__.split("\n\n")[0], argv, "timed pairs of optimizer steps", "untimed pairs first")
    if isinstance(made, int):
        return made
    parser, args, cfg, trainer = made
    unseen = trainer.unseen
    if unseen is None:
        return cli_exit(UserError("nothing is held out (holdout_per_id=0, or no identity has holdout_min_images); "
                                  "run with the default holdout"), parser.prog)  # fmt: skip
    every = unseen.every
    unseen.every = 1  # a measuring step is due at every step; the step without drops the measurement
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    print(
        f"unseen_ce cost on {machine()}: {cfg.model} ({cfg.pretrained or 'random init'}), {cfg.image_size[0]}x"
        f"{cfg.image_size[1]} images, {cfg.images_per_step} images per step, {len(unseen.images)} held-out images "
        f"per measurement, {torch.get_num_threads()} thread(s), {trainer.device}; {args.steps} timed pairs after {args.warmup}"
    )

    def step(on: bool) -> float:
        trainer.unseen = unseen if on else None
        trainer.step = 0  # hold the CE-only phase: the same work every step
        sync()
        started = time.thread_time()
        trainer.train_step()
        sync()
        return time.thread_time() - started

    added, without = [], []
    for pair in range(args.warmup + args.steps):
        order = (True, False) if pair % 2 == 0 else (False, True)
        seconds = {on: step(on) for on in order}
        if pair >= args.warmup:
            added.append(seconds[True] - seconds[False])
            without.append(seconds[False])
    without_ms = 1000 * statistics.median(without)
    added_ms = 1000 * statistics.median(added)
    share = added_ms / every / without_ms
    print(
        f"median step without the measurement {without_ms:.2f} ms; a measuring step adds {added_ms:.2f} ms "
        f"(+{added_ms / without_ms:.1%}); made once in unseen_every={every} steps"
    )
    print(f"target: unseen_ce adds < {TARGET:.0%} to a step: {share:.2%}, {'met' if share < TARGET else 'missed'}")
    print(f"unseen_ce share of a step: {share:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
