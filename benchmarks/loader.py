"""Can the image loader keep up with the training step? Loader images/s beside the step's images/s.

    python benchmarks/loader.py [--images 2000] [--file-size 256x128] [--workers 0,1,2] [--config FILE] [--set key=value ...]
    python benchmarks/loader.py --data /tmp/scale --workers 1,2 --step-images-per-s 390 --set image_size=384,128 batch_size=64

Writes a CUHK-PEDES-style data set (``reid_raw.json`` + ``imgs/``) of ``--images``
JPEG files at ``--file-size`` into a temp folder (synthetic people with captions,
rendered at that size), or reads the one at ``--data`` (the scale fixture:
``benchmarks/scale_data.py``), loads it like any data set on disk, then measures:

- the loader: the training stream (`reid_core.data.batches`: decode, resize to the
  config's ``image_size``, flip, normalise, pick a caption) for ``--batches`` batches
  after two warm-up batches (worker start-up excluded), at each ``--workers`` count;
- the training step alone: `Trainer.train_step` in the CE+SDM phase over batches
  already in memory, so nothing of the loading is in it.

The last line is the ratio of the loader's images/s (at the worker count training
uses on this device: ``loader_workers``, 0 on CPU) to the step's: at or above 1 the
loader keeps up (with workers it runs beside the step; with 0 workers, on CPU, its
time adds to every step). ``--step-images-per-s RATE`` compares against a step rate
measured elsewhere (a GPU's) instead of timing the step here (a ViT-B/16 step on a CPU
takes tens of seconds), and the line before the last says how many workers that rate
needs at the best images/s per worker measured. Timings on a machine shared with
other jobs are noisy: compare numbers from one run.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from common import seconds_per_step
from reid_core.flags import ArgumentParser, add_config_arguments
from reid_core.config import TrainConfig, coerce_value
from reid_core.data import available_cpus, batches, load_data, loader_workers
from reid_core.errors import UserError, cli_exit
from reid_core.model import context_length
from reid_core.synthetic import make_synthetic
from reid_core.train import load_cli_config
from reid_core.trainer import Trainer, resolve_device

PER_IDENTITY = 4  # images per identity in the written data set


def write_data_set(root: Path, images: int, size: tuple[int, int]) -> None:
    """``images`` training JPEGs (and a quarter more for the test split) with CUHK-PEDES records."""
    train, test = make_synthetic(max(2, images // PER_IDENTITY), PER_IDENTITY, size, seed=0)
    records = []
    for split, part in (("train", train), ("test", test)):
        for k, (image, pid, caption) in enumerate(zip(part.images, part.pids, part.captions)):
            rel = f"{split}/{pid}_{k}.jpg"
            (root / "imgs" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(root / "imgs" / rel, quality=90)
            records.append({"split": split, "id": int(pid), "file_path": rel, "captions": [caption]})
    (root / "reid_raw.json").write_text(json.dumps(records))


def loader_images_per_s(data, cfg: TrainConfig, device: torch.device, workers: int, n_batches: int) -> float:
    stream = batches(data, cfg.batch_size, cfg.seed, device, workers)
    for _ in range(2):  # workers start and fill their prefetch queue
        next(stream)
    started = time.perf_counter()
    for images, _, _ in itertools.islice(stream, n_batches):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    stream.close()  # shuts the workers down
    return n_batches * cfg.batch_size / (time.perf_counter() - started)


def step_images_per_s(data, cfg: TrainConfig, steps: int, warmup: int) -> float:
    """The CE+SDM training step over batches already in memory: no loading inside."""
    trainer = Trainer(cfg, data)
    trainer.stream = itertools.cycle(list(itertools.islice(trainer.stream, max(4, cfg.grad_accum_steps))))
    phase_step = cfg.ce_only_steps + max(cfg.sdm_ramp_steps - 1, 0)
    return cfg.images_per_step / seconds_per_step(trainer, phase_step, warmup, steps)


def workers_needed(step_images_per_s: float, per_worker: float) -> int:
    """DataLoader workers that decode as fast as the step consumes: ceil(step rate / one worker's rate)."""
    return math.ceil(step_images_per_s / per_worker) if per_worker > 0 else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/loader.py", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--images", type=int, default=2000, help="training images written to the temp data set")
    parser.add_argument("--data", help="read this data set on disk instead of writing one (e.g. the scale fixture)")
    parser.add_argument("--step-images-per-s", type=float, help="the training step's images/s measured elsewhere (a GPU's): not timed here")
    parser.add_argument("--file-size", default="256x128", help="height x width of the written JPEGs (default 256x128)")
    parser.add_argument("--workers", default=None, help="comma-separated DataLoader worker counts (default: 0,1,2 up to the CPUs)")
    parser.add_argument("--batches", type=int, default=30, help="timed loader batches per worker count")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    args = parser.parse_args(argv)
    if min(args.images, args.batches, args.steps) < 1 or args.warmup < 0:
        parser.error("--images, --batches and --steps must be >= 1 and --warmup >= 0")
    try:
        try:
            size = coerce_value("image_size", args.file_size)  # same syntax as image_size
        except UserError:
            raise UserError(f"--file-size {args.file_size!r} must be HEIGHTxWIDTH in pixels, e.g. 256x128") from None
        workers = sorted({int(w) for w in args.workers.split(",")}) if args.workers else None
        if workers is not None and min(workers) < 0:
            raise UserError(f"--workers {args.workers}: worker counts must be >= 0")
        base = load_cli_config(args.config, args.overrides)
    except (UserError, ValueError) as err:  # int('x') in --workers
        return cli_exit(UserError(str(err)), parser.prog)

    with tempfile.TemporaryDirectory(prefix="reid-loader-") as tmp:
        started = time.perf_counter()
        if args.data is None:
            write_data_set(Path(tmp), args.images, size)
        written_s = time.perf_counter() - started
        try:
            where = {"data": args.data} if args.data else {"data": tmp, "data_format": "cuhk-pedes"}
            cfg = TrainConfig.from_dict(where, base=base)
            data = load_data(cfg, context_length(cfg))
            device = resolve_device(cfg)
        except UserError as err:
            return cli_exit(err, parser.prog)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        used = loader_workers(cfg, device)
        cpus = available_cpus()
        counts = workers if workers is not None else sorted({w for w in (0, 1, 2) if w <= cpus} | {used})
        source = f"from {args.data}" if args.data else f"of {size[0]}x{size[1]} (written in {written_s:.1f}s)"
        print(
            f"loader vs step: {len(data.train)} training JPEGs {source} "
            f"decoded to {cfg.image_size[0]}x{cfg.image_size[1]}, batch {cfg.batch_size}, {cfg.model}, "
            f"{torch.get_num_threads()} torch thread(s), {device}, {cpus} CPUs"
        )
        print(f"{'what':<34} {'images/s':>9}")
        loader = {}
        for w in counts:
            loader[w] = loader_images_per_s(data, cfg, device, w, args.batches)
            print(f"{f'loader, {w} worker(s)':<34} {loader[w]:>9.0f}")
        if used not in loader:
            loader[used] = loader_images_per_s(data, cfg, device, used, args.batches)
        if args.step_images_per_s:
            step = args.step_images_per_s
            print(f"{'training step (given)':<34} {step:>9.0f}")
        else:
            step = step_images_per_s(data, cfg, args.steps, args.warmup)
            print(f"{'training step (CE+SDM), no loading':<34} {step:>9.0f}")
    per_worker = max((rate / w for w, rate in loader.items() if w > 0), default=loader.get(0, 0.0))
    print(f"workers needed for {step:.0f} images/s at {per_worker:.0f} images/s per worker: {workers_needed(step, per_worker)}")
    verdict = "keeps up" if loader[used] >= step else "starves the step"
    print(f"loader / step at loader_workers={used} (what training on {device.type} uses): {loader[used] / step:.2f}x, {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
