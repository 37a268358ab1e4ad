"""The training job: ``train(cfg, report)`` and its plain command line.

One function serves both the Ray Tune search (``report`` forwards to
``ray.tune.report``) and the plain re-run (``report`` writes ``metrics.csv``
and prints progress). It never imports ray.

    python -m reid_core.train --config best_config.json --out runs/rerun
"""

from __future__ import annotations

import contextlib
import csv
import math
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from reid_core.cli import ArgumentParser, add_config_arguments
from reid_core.config import TrainConfig
from reid_core.data import ReIDData, batches, load_data, normalise
from reid_core.errors import UserError, cli_exit
from reid_core.io import write_json_atomic
from reid_core.losses import id_loss, sdm_loss
from reid_core.metrics import retrieval_metrics
from reid_core.model import ReIDModel, build_model, context_length, parameter_groups
from reid_core.schedule import ema, lr_factor, sdm_weight_at

Report = Callable[[dict[str, Any]], None]

# Every metric reported per optimizer step, in metrics.csv column order.
STEP_METRICS = (
    "step",  # optimizer steps taken
    "samples",  # training images seen (the search's time axis: equal compute whatever the accumulation)
    "ce",  # identity cross-entropy, mean over the step's micro-batches
    "ce_ema",  # exponential moving average of ce: what stopping decisions read
    "sdm",  # SDM image-text loss (0 while the text encoder is skipped)
    "loss",  # ce + sdm_weight * sdm
    "sdm_weight",  # current SDM weight (0 during the CE-only warm-up)
    "lr_head",  # learning rate of BNNeck + classifier
    "lr_backbone",  # learning rate of the open_clip encoders
    "head_weight_norm",  # Frobenius norm of the classifier weight
    "head_weight_change",  # Frobenius norm of (classifier weight - its value at step 0)
    "head_grad_norm",  # norm of the classifier weight's gradient (unscaled, before clipping)
    "feature_norm",  # mean L2 norm of the raw image features entering the BNNeck
    "logit_std",  # standard deviation of the identity logits (bounded logits stay tiny)
    "loss_scale",  # fp16 GradScaler scale (1 when not in fp16)
    "skipped_steps",  # optimizer steps skipped so far because of inf/nan gradients (fp16)
    "chance_ce",  # log(num_classes): the CE of a head that knows nothing
    "images_per_s",  # training throughput of this step
)
EVAL_METRICS = ("val_r1", "val_r5", "val_r10", "val_map", "val_minp")
METRIC_COLUMNS = STEP_METRICS + EVAL_METRICS


# --- runtime setup --------------------------------------------------------------


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{cfg.device}' requested but CUDA is not available; use --set device=cpu or auto")
    return torch.device(cfg.device)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for full fp32 (always on CPU)."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int, threads: int) -> None:
    """Same seed and threads, same curve: the re-run of a trial depends on it."""
    if threads > 0:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- evaluation --------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: ReIDModel, data: ReIDData, device: torch.device, dtype: Optional[torch.dtype]) -> dict[str, float]:
    """Text-to-image retrieval on the test split: each caption queries the test images."""
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    image_feats, text_feats = [], []
    with autocast:
        for start in range(0, len(data.test.pids), 256):
            images = normalise(data.test.images[start : start + 256]).to(device)
            tokens = data.test.tokens[start : start + 256].to(device)
            image_feats.append(nn.functional.normalize(model.encode_image(images).float(), dim=-1))
            text_feats.append(nn.functional.normalize(model.encode_text(tokens).float(), dim=-1))
    model.train(was_training)
    similarity = torch.cat(text_feats) @ torch.cat(image_feats).t()
    pids = data.test.pids.to(device)
    scores = retrieval_metrics(similarity.cpu(), pids.cpu(), pids.cpu())
    return {f"val_{k}": v for k, v in scores.items()}


# --- training ----------------------------------------------------------------------


def train(cfg: TrainConfig, report: Optional[Report] = None, *, log: Callable[[str], None] = lambda s: None) -> dict:
    """Train ``cfg`` and return a summary; ``report(metrics)`` is called once per optimizer step.

    Ends with ``end_reason`` ``completed`` (all ``max_steps`` done) or ``diverged``
    (the loss became NaN/inf; the last report carries it). Raises `UserError`
    for bad data or config before the first step, so nothing is reported then.
    """
    started = time.perf_counter()
    seed_everything(cfg.seed, cfg.threads)
    device = resolve_device(cfg)
    dtype = amp_dtype(cfg, device)

    data = load_data(cfg, context_length(cfg))
    model = build_model(cfg, num_classes=data.num_classes).to(device).train()
    chance_ce = math.log(data.num_classes)
    log(
        f"training {cfg.model} on {data.name}: {len(data.labels)} images, {data.num_classes} identities "
        f"(chance CE {chance_ce:.3f}), {cfg.max_steps} steps of {cfg.images_per_step} images on {device}"
    )

    optimizer = _adamw(parameter_groups(model, cfg), device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    stream = batches(data, cfg.batch_size, cfg.seed, device)
    head_weight = model.classifier.weight
    head_weight_start = head_weight.detach().clone()

    ce_ema: Optional[float] = None
    best_ce_ema = math.inf
    skipped = 0
    metrics: dict[str, Any] = {}
    end_reason, message = "completed", ""
    for step in range(cfg.max_steps):
        step_started = time.perf_counter()
        factor = lr_factor(step, cfg.lr_warmup_steps, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        sdm_weight = sdm_weight_at(step, cfg.warmup_steps, cfg.sdm_ramp_steps, cfg.sdm_weight)

        # Accumulate grad_accum_steps micro-batches into one optimizer step. Each loss is divided
        # by the number of micro-batches so the step equals one big batch's mean-loss step.
        sums = torch.zeros(5)  # ce, sdm, loss, feature_norm, logit_std over micro-batches
        for _ in range(cfg.grad_accum_steps):
            images, labels, tokens = next(stream)
            with autocast:
                features = model.encode_image(images)  # raw features: the BNNeck needs them unnormalised
                logits = model.identity_logits(features)
                ce = id_loss(logits, labels, cfg.label_smoothing)
                sdm = torch.zeros((), device=device)
                if sdm_weight > 0:  # CE-only warm-up: the text encoder is not even run
                    sdm = sdm_loss(features, model.encode_text(tokens), labels, cfg.logit_scale)
                loss = ce + sdm_weight * sdm
            scaler.scale(loss / cfg.grad_accum_steps).backward()
            with torch.no_grad():
                sums += torch.stack(
                    [ce, sdm, loss, features.float().norm(dim=1).mean(), logits.float().std()]
                ).detach().float().cpu()

        scaler.unscale_(optimizer)  # no-op without fp16; makes grad norms real numbers
        head_grad_norm = head_weight.grad.norm().item() if head_weight.grad is not None else 0.0
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)
        scaler.update()
        if scaler.is_enabled() and scaler.get_scale() < scale_before:
            skipped += 1  # GradScaler found inf/nan and skipped this step
        optimizer.zero_grad(set_to_none=True)  # None, not 0: AdamW leaves grad-less params (idle text tower) alone

        ce_v, sdm_v, loss_v, feat_norm, logit_std = (sums / cfg.grad_accum_steps).tolist()
        finite = math.isfinite(ce_v) and math.isfinite(loss_v)
        ce_ema = ema(ce_ema, ce_v, cfg.ce_ema_beta) if finite else float("nan")
        with torch.no_grad():
            weight_norm = head_weight.norm().item()
            weight_change = (head_weight - head_weight_start).norm().item()
        metrics = {
            "step": step + 1,
            "samples": (step + 1) * cfg.images_per_step,
            "ce": ce_v,
            "ce_ema": ce_ema,
            "sdm": sdm_v,
            "loss": loss_v,
            "sdm_weight": sdm_weight,
            "lr_head": cfg.head_lr * factor,
            "lr_backbone": cfg.lr_backbone * factor,
            "head_weight_norm": weight_norm,
            "head_weight_change": weight_change,
            "head_grad_norm": head_grad_norm,
            "feature_norm": feat_norm,
            "logit_std": logit_std,
            "loss_scale": scaler.get_scale() if scaler.is_enabled() else 1.0,
            "skipped_steps": skipped,
            "chance_ce": chance_ce,
            "images_per_s": cfg.images_per_step / max(time.perf_counter() - step_started, 1e-9),
        }
        if not finite:
            end_reason = "diverged"
            message = (
                f"loss became {'nan' if math.isnan(loss_v) else 'inf'} at step {step + 1}; "
                "lower head_lr or lr_backbone, or set grad_clip"
            )
        else:
            best_ce_ema = min(best_ce_ema, ce_ema)
            last = step + 1 == cfg.max_steps
            if last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
                metrics.update(evaluate(model, data, device, dtype))
        if report is not None:
            report(metrics)
        if not finite:
            log(f"diverged: {message}")
            break

    return {
        "end_reason": end_reason,
        "message": message,
        "steps": metrics.get("step", 0),
        "samples": metrics.get("samples", 0),
        "num_classes": data.num_classes,
        "chance_ce": chance_ce,
        "best_ce_ema": best_ce_ema if math.isfinite(best_ce_ema) else None,
        "final": metrics,
        "wall_s": time.perf_counter() - started,
    }


def _adamw(groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    # Fused AdamW: the 49408-row token embedding is most of a small CLIP's parameters and the
    # per-parameter foreach update cost ~40% of a CPU step; fused does it in one pass.
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype the fused kernel does not cover
        return torch.optim.AdamW(groups)


# --- plain command line --------------------------------------------------------------


class RunWriter:
    """The plain job's ``report``: metrics.csv row per step, config.json, and a progress line now and then.

    Nothing is written until the first step is reported: a config or data error
    leaves ``--out`` untouched.
    """

    def __init__(self, cfg: TrainConfig, out: Path, log_every_s: float = 5.0, stream=sys.stdout):
        self.cfg, self.out, self.log_every_s, self.stream = cfg, out, log_every_s, stream
        self._file = None
        self._writer: Optional[csv.DictWriter] = None
        self._started = time.perf_counter()
        self._last_log = -math.inf

    def __call__(self, metrics: dict[str, Any]) -> None:
        if self._writer is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.out / "config.json")
            self._file = open(self.out / "metrics.csv", "w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS, restval="")
            self._writer.writeheader()
        self._writer.writerow({k: metrics.get(k, "") for k in METRIC_COLUMNS})
        now = time.perf_counter()
        if now - self._last_log >= self.log_every_s or metrics["step"] == self.cfg.max_steps:
            self._last_log = now
            self._file.flush()
            print(progress_line(metrics, self.cfg.max_steps, now - self._started), file=self.stream, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def progress_line(m: dict[str, Any], max_steps: int, elapsed: float) -> str:
    eta = elapsed / m["step"] * (max_steps - m["step"])
    return (
        f"step {m['step']:>5}/{max_steps}  ce {m['ce']:.3f}  ce_ema {m['ce_ema']:.3f} "
        f"(chance {m['chance_ce']:.2f})  head_lr {m['lr_head']:.2e}  {m['images_per_s']:.0f} img/s  "
        f"eta {eta:.0f}s"
    )


def load_cli_config(config: Optional[str], overrides: Sequence[str]) -> TrainConfig:
    base = TrainConfig.from_file(config) if config else TrainConfig()
    return base.with_overrides(overrides)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m reid_core.train", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/train-TIMESTAMP)")
    parser.add_argument("--log-every", type=float, default=5.0, metavar="SECONDS", help="progress line interval")
    args = parser.parse_args(argv)
    try:
        cfg = load_cli_config(args.config, args.overrides)
        out = Path(args.out or f"runs/train-{datetime.now():%Y%m%d-%H%M%S}")
        if (out / "metrics.csv").exists():
            raise UserError(f"'{out}' already holds a run (metrics.csv); pass a new --out folder")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out '{out}' is a file; pass a folder")
        writer = RunWriter(cfg, out, args.log_every)
        try:
            summary = train(cfg, writer, log=print)
        finally:
            writer.close()
    except UserError as err:
        return cli_exit(err, parser.prog)
    write_json_atomic(out / "summary.json", summary)
    final = summary["final"]
    print(
        f"{summary['end_reason']} after {summary['steps']} steps ({summary['samples']} images): "
        f"ce_ema {final.get('ce_ema', float('nan')):.3f} vs chance {summary['chance_ce']:.3f}"
        + (f", text-to-image R@1 {final['val_r1']:.1f}" if "val_r1" in final else "")
    )
    print(f"wrote {out}/metrics.csv, {out}/summary.json, {out}/config.json")
    return 0 if summary["end_reason"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
