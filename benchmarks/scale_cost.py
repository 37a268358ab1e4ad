"""What the harness's own parts cost at the scale users train: ViT-B/16 at 384x128 with an 11,003-identity head.

    python benchmarks/scale_cost.py                          # CPU: batch 4, 3 timed steps; ~10 min on 2 loaded cores
    python benchmarks/scale_cost.py --set device=cuda amp=bf16 batch_size=64 --steps 20   # a GPU (gpu_scale.sh runs it)
    python benchmarks/scale_cost.py --data /tmp/scale        # also time the driver's data check on a folder

Builds the `Trainer` of ``--set`` on top of ViT-B/16 (random init, 384x128, ``num_classes`` 11,003, a few
synthetic identities in memory: the head's size, not the data, is what is measured), holds the CE-only phase
(the cheaper step: the shares below are the larger for it) and measures, in this order:

- build: seconds to build the Trainer, and the process's peak memory after it and after the steps;
- step: seconds per optimizer step (``--steps`` after one warm-up; CUDA synchronised);
- monitor: time inside `HeadMonitor`'s three calls per step, on the steps it measures (1 in ``monitor_every``) and
  between; its share of a step is (measuring + (every - 1) x between) / every over the step time;
- guard: `Trainer.head_state` (the copy ``head_guard`` takes before every step: the head and its AdamW moments),
  its time as a share of a step;
- checkpoint: `Trainer.state_dict` written with ``torch.save`` to ``--checkpoint-dir`` (a temp folder by default,
  removed): its size and write time, against the driver's estimate (`reid_core.job.ReIDJob.checkpoint_bytes`);
- pre-flight: the wiring check's one forward/backward (`reid_core.preflight._check_wiring`), timed; the overfit
  check's 60 steps (twice when the top head LR fails) extrapolated from the step time at batch 32;
- with ``--data``: the driver's check of that data set (`ReIDJob.check`: read and check every record and image header).

A CPU step of ViT-B/16 takes tens of seconds, so the CPU figures are few steps at a small batch: the shares
understate a GPU's, whose step is hundreds of times shorter while the copies shrink less. Last line: the
monitor's and the guard's shares.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from common import machine
from reid_core.config import TrainConfig
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser, add_config_arguments
from reid_core.job import ReIDJob
from reid_core.preflight import OVERFIT_STEPS, _check_wiring
from reid_core.train import load_cli_config
from reid_core.trainer import Trainer

SCALE = {  # IRRA's model and image size, CUHK-PEDES's training identities
    "model": "ViT-B-16", "pretrained": None, "image_size": [384, 128], "num_classes": 11003,
    "synthetic_identities": 8, "synthetic_images_per_identity": 2, "batch_size": 4, "threads": 0,
    "ce_only_steps": 10**6, "eval_every": 0,
}  # fmt: skip
TARGET = 0.01


def peak_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/scale_cost.py", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps after one warm-up (default 3)")
    parser.add_argument("--checkpoint-dir", help="where to write the checkpoint (default: a temp folder, removed)")
    parser.add_argument("--data", help="also time the driver's check of this data set (e.g. the scale fixture)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps is {args.steps}, but must be >= 1")
    try:
        cfg = TrainConfig.from_dict(SCALE, base=load_cli_config(args.config, []))
        cfg = cfg.with_overrides(args.overrides)
        started = time.perf_counter()
        trainer = Trainer(cfg)
    except UserError as err:
        return cli_exit(err, parser.prog)
    build_s, build_gib = time.perf_counter() - started, peak_gib()
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    print(
        f"scale cost on {machine()}: {cfg.model} at {cfg.image_size[0]}x{cfg.image_size[1]}, {cfg.num_classes} identities, "
        f"batch {cfg.batch_size}, {trainer.device}, amp {trainer.dtype or 'off'}, {torch.get_num_threads()} thread(s); "
        f"Trainer built in {build_s:.1f} s, peak memory {build_gib:.1f} GiB"
    )

    monitor = trainer.monitor
    spent = {"measuring": [], "between": []}
    inside = [0.0]

    def timed(method):
        def wrapper(*a, **k):
            sync()
            t = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                sync()
                inside[0] += time.perf_counter() - t

        return wrapper

    for name in ("observe", "after_backward", "after_step"):
        setattr(monitor, name, timed(getattr(monitor, name)))
    steps, cpu = [], []
    for i in range(1 + args.steps):
        monitor.measuring = i <= 1  # the warm-up and the first timed step measure, the others are between
        kind = "measuring" if monitor.measuring else "between"
        inside[0] = 0.0
        sync()
        t, c = time.perf_counter(), time.process_time()
        trainer.train_step()
        sync()
        if i:  # the first step warms up
            steps.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            spent[kind].append(inside[0])
        print(f"  step {i + 1}: {time.perf_counter() - t:.2f} s ({kind}; monitor {1000 * inside[0]:.1f} ms)", flush=True)
    step_s = statistics.median(steps)
    every = monitor.every
    measuring = statistics.median(spent["measuring"]) if spent["measuring"] else 0.0
    between = statistics.median(spent["between"]) if spent["between"] else 0.0
    monitor_share = (measuring + (every - 1) * between) / every / step_s
    print(
        f"step: {step_s:.3f} s median of {len(steps)} ({cfg.batch_size / step_s:.1f} images/s), {statistics.median(cpu):.1f} s of CPU "
        f"(a loaded machine: wall / CPU x threads shows it); peak memory {peak_gib():.1f} GiB"
    )
    print(
        f"monitor: {1000 * measuring:.2f} ms on a measuring step, {1000 * between:.2f} ms between (1 in {every} measures): "
        f"{monitor_share:.3%} of a step"
    )

    copies = []
    for _ in range(5):
        sync()
        t = time.perf_counter()
        state = trainer.head_state()
        sync()
        copies.append(time.perf_counter() - t)
    head_bytes = sum(v.numel() * v.element_size() for part in state.values() for d in part for v in d.values() if torch.is_tensor(v))
    del state
    guard_share = statistics.median(copies) / step_s
    print(f"guard: copies the head and its moments ({head_bytes / 1e6:.1f} MB) in {1000 * statistics.median(copies):.2f} ms: {guard_share:.3%} of a step")

    folder = Path(args.checkpoint_dir or tempfile.mkdtemp(prefix="reid-scale-"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        torch.save(trainer.state_dict(), folder / "trainer.pt")
        write_s = time.perf_counter() - t
        size = (folder / "trainer.pt").stat().st_size
    finally:
        if args.checkpoint_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            (folder / "trainer.pt").unlink(missing_ok=True)
    estimate = ReIDJob().checkpoint_bytes(cfg.to_dict())
    print(
        f"checkpoint: {size / 1e9:.2f} GB written in {write_s:.1f} s ({size / 1e6 / write_s:.0f} MB/s); the driver's estimate "
        f"{estimate / 1e9:.2f} GB (an upper bound: in the CE-only phase the text tower has no AdamW moments yet)"
    )

    sync()
    t = time.perf_counter()
    _check_wiring(trainer)
    sync()
    wiring_s = time.perf_counter() - t
    overfit_s = 2 * OVERFIT_STEPS * step_s * 32 / cfg.batch_size  # batch 32, at worst twice (the known-good head LR)
    print(
        f"pre-flight: wiring check {wiring_s:.1f} s at batch {cfg.batch_size}; overfit check ~{OVERFIT_STEPS} steps at batch 32: "
        f"~{overfit_s / 2 / 60:.0f} min, ~{overfit_s / 60:.0f} min when the top head LR fails (extrapolated); peak memory {peak_gib():.1f} GiB"
    )
    if args.data:
        t = time.perf_counter()
        ReIDJob().check(TrainConfig.from_dict({"data": args.data, "num_classes": None}, base=cfg).to_dict(), log=lambda s: None)
        print(f"data check of {args.data}: {time.perf_counter() - t:.1f} s (annotation read, every image's header opened)")
    print(f"targets < {TARGET:.0%} each: monitor {'met' if monitor_share < TARGET else 'missed'}, guard {'met' if guard_share < TARGET else 'missed'}")
    print(f"monitor share {monitor_share:.4f}, guard share {guard_share:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
