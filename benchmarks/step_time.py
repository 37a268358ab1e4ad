"""Time the training job's optimizer step: ms per step and images/s, CE-only and CE+SDM phases.

    python benchmarks/step_time.py [--steps 50] [--warmup 5] [--config FILE] [--set key=value ...]

Builds the default `TrainConfig` (reid-tiny with random weights, 64x32 images,
batch 32, 400 synthetic identities, ``threads=1``; ``--config``/``--set`` on
top), warms up a few steps, then times ``--steps`` calls of
`Trainer.train_step` (forward, backward, AdamW step, metrics: everything one
optimizer step costs in a trial) in each phase:

- CE-only: the warm-up, where the text encoder is not run at all;
- CE+SDM: after the ramp, image and text encoders both run.

The phase is held by setting ``trainer.step`` before every step, so any
``--steps`` stays in it. The same steps are timed again with a plain foreach
(non-fused) AdamW as the baseline; the last line is the fused optimizer's
speedup over it, summed over the phases.

Target: <= 80 ms per optimizer step on one CPU thread with the default config,
in the slower CE+SDM phase. The 49408 x 64 token embedding is 93% of the tiny
model's parameters, so the AdamW update is a large part of a CPU step; that is
what fused AdamW is for. Timings on a machine shared with other jobs are noisy:
compare numbers from one run.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch

from common import seconds_per_step
from reid_core.flags import ArgumentParser, add_config_arguments
from reid_core.config import TrainConfig
from reid_core.data import load_data
from reid_core.errors import UserError, cli_exit
from reid_core.model import context_length, parameter_groups
from reid_core.train import load_cli_config
from reid_core.trainer import Trainer
from reid_core.shipped_weights import effective_pretrained

TARGET_MS = 80.0  # per optimizer step, one CPU thread, default config, CE+SDM phase


def phases(cfg: TrainConfig) -> list[tuple[str, int]]:
    """``(name, step)``: a step number inside each phase the config has."""
    out = []
    if cfg.ce_only_steps > 0:
        out.append(("CE-only", 0))
    if cfg.sdm_weight > 0:
        out.append(("CE+SDM", cfg.ce_only_steps + max(cfg.sdm_ramp_steps - 1, 0)))  # ramp done: full SDM weight
    return out


def foreach_adamw(trainer: Trainer) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameter_groups(trainer.model, trainer.cfg), foreach=True, fused=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/step_time.py", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=50, help="timed optimizer steps per phase and optimizer")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each timing")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps is {args.steps} and --warmup {args.warmup}, but must be --steps >= 1 and --warmup >= 0")
    try:
        cfg = load_cli_config(args.config, args.overrides)
        data = load_data(cfg, context_length(cfg))
        fused = Trainer(cfg, data)
        baseline = Trainer(cfg, data)
    except UserError as err:
        return cli_exit(err, parser.prog)
    baseline.optimizer = foreach_adamw(baseline)
    fused_name = "AdamW fused" if fused.optimizer.defaults.get("fused") else "AdamW (fused unavailable)"
    optimizers = [(fused_name, fused), ("AdamW foreach", baseline)]

    print(
        f"step time of {cfg.model} ({effective_pretrained(cfg.model, cfg.pretrained) or 'random init'}), {cfg.image_size[0]}x{cfg.image_size[1]} images, "
        f"batch {cfg.batch_size} x {cfg.grad_accum_steps} = {cfg.images_per_step} images per step, "
        f"{data.num_classes} identities, {torch.get_num_threads()} thread(s), {fused.device}; "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    print(f"{'phase':<9} {'optimizer':<26} {'ms/step':>8} {'images/s':>9}")
    ms: dict[tuple[str, str], float] = {}
    for phase, step in phases(cfg):
        for name, trainer in optimizers:
            ms[phase, name] = 1000 * seconds_per_step(trainer, step, args.warmup, args.steps)
            print(f"{phase:<9} {name:<26} {ms[phase, name]:>8.1f} {cfg.images_per_step / ms[phase, name] * 1000:>9.0f}")
    if not ms:
        print("no phase to time: ce_only_steps is 0 and sdm_weight is 0")
        return 0

    slowest = max(ms[phase, fused_name] for phase, _ in phases(cfg))
    verdict = "met" if slowest <= TARGET_MS else "missed"
    print(f"target: <= {TARGET_MS:.0f} ms per optimizer step (slowest phase, {fused_name}): {slowest:.1f} ms, {verdict}")
    total_fused = sum(v for (_, name), v in ms.items() if name == fused_name)
    total_foreach = sum(v for (_, name), v in ms.items() if name == "AdamW foreach")
    print(f"fused speedup: {total_foreach / total_fused:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
