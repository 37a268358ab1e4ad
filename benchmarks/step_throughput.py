"""Step throughput: images/s of our training step against a minimal plain PyTorch loop over the same model.

    python benchmarks/step_throughput.py [--steps 40] [--warmup 5] [--repeats 4] [--config FILE] [--set key=value ...]
    python benchmarks/step_throughput.py --set model=ViT-B-16 image_size=384,128 batch_size=64 device=cuda amp=bf16

Both sides train the same open_clip model (``cfg.model``, random init unless
``cfg.pretrained``), with the same batch, accumulation, precision (autocast
dtype as `reid_core.train.amp_dtype` picks: fp32 on CPU) and thread count:

- ours: `reid_core.train.Trainer.train_step`, everything one optimizer step
  costs in a trial: batch sampling and normalising, forward, backward, fused
  AdamW, LR schedule, GradScaler bookkeeping and the reported metrics;
- the floor: a minimal loop written here in plain PyTorch: ``open_clip.create_model``
  + BatchNorm1d (bias frozen) + bias-free Linear, ``F.cross_entropy`` (+ SDM
  written inline), ``backward``, fused AdamW ``step``, ``zero_grad``, over
  batches taken from the same stream beforehand and cycled. It reads no metric
  and never syncs with the device inside the loop.

Each is timed in the two phases of a run: CE-only (the warm-up, text encoder
not run) and CE+SDM (after the ramp). ``trainer.step`` is held inside the
phase as in ``step_time.py``. Timings alternate ours, floor, floor, ours, ...
(``--repeats``) so drift on a shared machine hits both. The last line is ours
over the floor in images/s, over both phases (total time of the floor / ours).

No target in issue 7: the floor is what the harness cannot beat (a ratio near
1.0 means the harness's bookkeeping is free; it cannot meaningfully exceed 1).
On a GPU, run it with ViT-B-16 and bf16 autocast (second command above) and
record the card: per-step ``.item()`` reads of the metrics are where a GPU
step would lose against the floor.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from typing import Optional, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

import reid_core.model  # noqa: F401  registers the 'reid-tiny' open_clip config
from common import machine
from reid_core.flags import ArgumentParser, add_config_arguments
from reid_core.config import TrainConfig
from reid_core.data import batches, load_data
from reid_core.errors import UserError, cli_exit
from reid_core.model import context_length
from reid_core.pretrained import resolve_pretrained
from reid_core.train import load_cli_config
from reid_core.trainer import Trainer
from reid_core.shipped_weights import effective_pretrained
from step_time import phases, seconds_per_step


class PlainLoop:
    """The floor: the same model, loss and optimizer step, nothing else."""

    def __init__(self, cfg: TrainConfig, trainer: Trainer, batch_list: list):
        weights, quick_gelu = resolve_pretrained(cfg)
        torch.manual_seed(cfg.seed)
        self.clip = open_clip.create_model(
            cfg.model, pretrained=weights, force_image_size=tuple(cfg.image_size), force_quick_gelu=quick_gelu
        )
        self.clip.logit_scale.requires_grad_(False)
        dim = self.clip.visual.output_dim
        self.bnneck = nn.BatchNorm1d(dim)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, trainer.data.num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        device, self.dtype = trainer.device, trainer.dtype
        self.modules = nn.ModuleList([self.clip, self.bnneck, self.classifier]).to(device).train()
        params = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.backbone_lr, weight_decay=cfg.weight_decay, fused=True)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.device, self.cfg = device, cfg
        self.batches = itertools.cycle(batch_list)

    def step(self, sdm_weight: float) -> None:
        cfg = self.cfg
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        for _ in range(cfg.grad_accum_steps):
            images, labels, tokens = next(self.batches)
            with autocast:
                features = self.clip.encode_image(images)
                loss = F.cross_entropy(self.classifier(self.bnneck(features)).float(), labels)
                if sdm_weight > 0:
                    loss = loss + sdm_weight * sdm(features, self.clip.encode_text(tokens), labels, cfg.logit_scale)
            self.scaler.scale(loss / cfg.grad_accum_steps).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def sdm(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """IRRA's SDM, both directions, as the reference writes it."""
    image_norm = F.normalize(image_features.float(), dim=-1)
    text_norm = F.normalize(text_features.float(), dim=-1)
    same = (labels.view(-1, 1) == labels.view(1, -1)).float()
    log_target = torch.log(same / same.sum(dim=1, keepdim=True) + 1e-8)
    logits = scale * image_norm @ text_norm.t()
    return sum((F.softmax(z, dim=1) * (F.log_softmax(z, dim=1) - log_target)).sum(dim=1).mean() for z in (logits, logits.t()))


def plain_seconds_per_step(loop: PlainLoop, sdm_weight: float, warmup: int, steps: int) -> float:
    sync = torch.cuda.synchronize if loop.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        loop.step(sdm_weight)
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        loop.step(sdm_weight)
    sync()
    return (time.perf_counter() - started) / steps


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/step_throughput.py", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per phase, side and repeat (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each timing (default 5)")
    parser.add_argument("--repeats", type=int, default=4, help="timings per phase and side, alternating (default 4)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error(
            f"--steps is {args.steps}, --warmup {args.warmup} and --repeats {args.repeats}, "
            "but must be --steps >= 1, --warmup >= 0 and --repeats >= 1"
        )
    try:
        cfg = load_cli_config(args.config, args.overrides)
        data = load_data(cfg, context_length(cfg))
        trainer = Trainer(cfg, data)
    except UserError as err:
        return cli_exit(err, parser.prog)
    # The floor's batches: the same stream the trainer draws from, made beforehand (at most one epoch's worth).
    needed = (args.warmup + args.steps) * cfg.grad_accum_steps
    stream = batches(data, cfg.batch_size, cfg.seed, trainer.device, trainer.workers)
    batch_list = list(itertools.islice(stream, min(needed, len(data.labels) // cfg.batch_size)))
    plain = PlainLoop(cfg, trainer, batch_list)

    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[trainer.dtype]
    print(
        f"step throughput of {cfg.model} ({effective_pretrained(cfg.model, cfg.pretrained) or 'random init'}), {cfg.image_size[0]}x{cfg.image_size[1]} "
        f"images, batch {cfg.batch_size} x {cfg.grad_accum_steps}, {data.num_classes} identities, {precision}, "
        f"{torch.get_num_threads()} thread(s), {trainer.device}; {args.steps} timed steps x {args.repeats} after "
        f"{args.warmup} warm-up\non {machine()}"
    )
    print(f"{'phase':<8} {'loop':<14} {'ms/step':>8} {'images/s':>9}")
    totals = {"reid_core": 0.0, "plain PyTorch": 0.0}
    ratios = []
    for phase, step in phases(cfg):
        weight = cfg.sdm_weight if phase == "CE+SDM" else 0.0
        seconds = {"reid_core": 0.0, "plain PyTorch": 0.0}
        for repeat in range(args.repeats):
            order = ("reid_core", "plain PyTorch") if repeat % 2 == 0 else ("plain PyTorch", "reid_core")
            for side in order:
                if side == "reid_core":
                    seconds[side] += seconds_per_step(trainer, step, args.warmup, args.steps)
                else:
                    seconds[side] += plain_seconds_per_step(plain, weight, args.warmup, args.steps)
        for side, total in seconds.items():
            ms = 1000 * total / args.repeats
            totals[side] += total
            print(f"{phase:<8} {side:<14} {ms:>8.1f} {cfg.images_per_step / ms * 1000:>9.0f}")
        ratios.append((phase, seconds["plain PyTorch"] / seconds["reid_core"]))
    if not ratios:
        print("no phase to time: ce_only_steps is 0 and sdm_weight is 0")
        return 0
    print("ours / floor per phase: " + ", ".join(f"{phase} {ratio:.3f}" for phase, ratio in ratios))
    print(f"images/s ratio (reid_core / plain PyTorch): {totals['plain PyTorch'] / totals['reid_core']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
