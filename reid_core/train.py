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

from reid_core.cli import ArgumentParser, add_config_arguments, add_shortcut_arguments, shortcut_values
from reid_core.config import TrainConfig
from reid_core.diagnostics import at_chance, diagnose
from reid_core.data import EVAL_BATCH, ReIDData, Split, batches, eval_images, load_data, loader_workers
from reid_core.errors import UserError, cli_exit
from reid_core.io import write_json_atomic
from reid_core.losses import id_loss, sdm_loss
from reid_core.metrics import retrieval_metrics
from reid_core.model import ReIDModel, build_model, check_model, context_length, parameter_groups, resolve_pretrained
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
    "head_weight_change",  # |classifier weight - its step-0 value| / |step-0 value|: how far the head has moved
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
def evaluate(
    model: ReIDModel, data: ReIDData, device: torch.device, dtype: Optional[torch.dtype], workers: int = 0
) -> dict[str, float]:
    """Retrieval on the evaluated split (``eval_split``): each caption queries its images (text-to-image),
    or, for a data set without captions, each query image queries the gallery (image ReID, same-camera
    matches left out). Features are CLIP's L2-normalised projections, compared by cosine similarity."""
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    try:
        with autocast:
            gallery = _image_features(model, data.test, data.image_size, device, workers)
            if data.query is not None:
                query = _image_features(model, data.query, data.image_size, device, workers)
                similarity = query @ gallery.t()
                scores = retrieval_metrics(
                    similarity.cpu(), data.query.pids, data.test.pids, data.query.camids, data.test.camids
                )
            else:
                text = [
                    model.encode_text(data.test.tokens[start : start + EVAL_BATCH].to(device)).float()
                    for start in range(0, len(data.test.tokens), EVAL_BATCH)
                ]
                similarity = nn.functional.normalize(torch.cat(text), dim=-1) @ gallery.t()
                scores = retrieval_metrics(similarity.cpu(), data.test.caption_pids, data.test.pids)
    finally:
        model.train(was_training)
    return {f"val_{k}": v for k, v in scores.items()}


def _image_features(model: ReIDModel, split: Split, size, device: torch.device, workers: int) -> torch.Tensor:
    feats = [model.encode_image(images).float() for images in eval_images(split, size, device, workers)]
    return nn.functional.normalize(torch.cat(feats), dim=-1)


# --- training ----------------------------------------------------------------------


class Trainer:
    """The state of one training run and its optimizer step, separated from the loop so that
    tests, pre-flight checks and checkpoints can drive it one step at a time."""

    def __init__(self, cfg: TrainConfig, data: Optional[ReIDData] = None):
        self.cfg = cfg
        seed_everything(cfg.seed, cfg.threads)
        self.device = resolve_device(cfg)
        self.dtype = amp_dtype(cfg, self.device)
        check_model(cfg)  # before the data: a bad model name is one error line, not tokenizer warnings too
        resolve_pretrained(cfg)  # and missing weights (offline) fail before minutes of data checks
        self.data = data if data is not None else load_data(cfg, context_length(cfg))
        self.model = build_model(cfg, num_classes=self.data.num_classes).to(self.device).train()
        self.workers = loader_workers(cfg, self.device)
        self.chance_ce = math.log(self.data.num_classes)
        self.optimizer = _adamw(parameter_groups(self.model, cfg))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.stream = batches(self.data, cfg.batch_size, cfg.seed, self.device, self.workers)
        self.head_weight_start = self.model.classifier.weight.detach().clone()
        self.head_weight_start_norm = max(self.head_weight_start.norm().item(), 1e-12)
        self.step = 0  # optimizer steps taken
        self.ce_ema: Optional[float] = None
        self.skipped_steps = 0

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the same curve: only tensors and plain
        numbers, so it loads with ``torch.load(weights_only=True)``."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "ce_ema": self.ce_ema,
            "skipped_steps": self.skipped_steps,
            "head_weight_start": self.head_weight_start,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict`: weights, optimizer moments, step, EMA, RNG and data position."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.ce_ema, self.skipped_steps = state["step"], state["ce_ema"], state["skipped_steps"]
        self.head_weight_start = state["head_weight_start"].to(self.device)
        self.head_weight_start_norm = max(self.head_weight_start.norm().item(), 1e-12)
        # The micro-batch stream is a pure function of its seed and of how many batches were drawn:
        # drawing the same number again puts it where the checkpointed run was.
        for _ in range(self.step * self.cfg.grad_accum_steps):
            next(self.stream)
        torch.set_rng_state(state["torch_rng"])

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def backward(self, sdm_weight: float) -> torch.Tensor:
        """Run one optimizer step's micro-batches forward and backward; gradients are left in ``.grad``.

        Each micro-batch loss is divided by ``grad_accum_steps``, so the accumulated gradient is
        that of the mean loss over all the step's images. Returns the micro-batch means of
        (ce, sdm, loss, feature_norm, logit_std).
        """
        cfg, model = self.cfg, self.model
        sums = torch.zeros(5)
        for _ in range(cfg.grad_accum_steps):
            images, labels, tokens = next(self.stream)
            with self._autocast():
                features = model.encode_image(images)  # raw features: the BNNeck needs them unnormalised
                logits = model.identity_logits(features)
                ce = id_loss(logits, labels, cfg.label_smoothing)
                sdm = torch.zeros((), device=self.device)
                if sdm_weight > 0:  # CE-only warm-up: the text encoder is not even run
                    sdm = sdm_loss(features, model.encode_text(tokens), labels, cfg.logit_scale)
                loss = ce + sdm_weight * sdm
            self.scaler.scale(loss / cfg.grad_accum_steps).backward()
            with torch.no_grad():
                stats = [ce, sdm, loss, features.float().norm(dim=1).mean(), logits.float().std()]
                sums += torch.stack(stats).float().cpu()
        return sums / cfg.grad_accum_steps

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; returns its metrics (the ``STEP_METRICS``)."""
        cfg, optimizer, scaler = self.cfg, self.optimizer, self.scaler
        started = time.perf_counter()
        factor = lr_factor(self.step, cfg.lr_warmup_steps, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        sdm_weight = sdm_weight_at(self.step, cfg.warmup_steps, cfg.sdm_ramp_steps, cfg.sdm_weight)
        if not self.data.has_captions:
            sdm_weight = 0.0  # no captions (Market-1501): identity CE only

        ce, sdm, loss, feature_norm, logit_std = self.backward(sdm_weight).tolist()

        scaler.unscale_(optimizer)  # no-op without fp16; makes grad norms real numbers
        head_weight = self.model.classifier.weight
        head_grad_norm = head_weight.grad.norm().item() if head_weight.grad is not None else 0.0
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)
        scaler.update()
        if scaler.is_enabled() and scaler.get_scale() < scale_before:
            self.skipped_steps += 1  # GradScaler found inf/nan gradients and skipped the update
        optimizer.zero_grad(set_to_none=True)  # None, not 0: AdamW leaves grad-less params (idle text tower) alone
        self.step += 1

        finite = math.isfinite(ce) and math.isfinite(loss)
        # beta per batch of images: a step of k micro-batches weighs k batches, so ce_ema spans the same
        # images at any accumulation (the stopping rule and ASHA compare trials at equal images)
        self.ce_ema = ema(self.ce_ema, ce, cfg.ce_ema_beta**cfg.grad_accum_steps) if finite else float("nan")
        with torch.no_grad():
            weight_norm = head_weight.norm().item()
            weight_change = (head_weight - self.head_weight_start).norm().item() / self.head_weight_start_norm
        return {
            "step": self.step,
            "samples": self.step * cfg.images_per_step,
            "ce": ce,
            "ce_ema": self.ce_ema,
            "sdm": sdm,
            "loss": loss,
            "sdm_weight": sdm_weight,
            "lr_head": cfg.head_lr * factor,
            "lr_backbone": cfg.lr_backbone * factor,
            "head_weight_norm": weight_norm,
            "head_weight_change": weight_change,
            "head_grad_norm": head_grad_norm,
            "feature_norm": feature_norm,
            "logit_std": logit_std,
            "loss_scale": scaler.get_scale() if scaler.is_enabled() else 1.0,
            "skipped_steps": self.skipped_steps,
            "chance_ce": self.chance_ce,
            "images_per_s": cfg.images_per_step / max(time.perf_counter() - started, 1e-9),
        }

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.data, self.device, self.dtype, self.workers)


def train(
    cfg: TrainConfig,
    report: Optional[Report] = None,
    *,
    log: Callable[[str], None] = lambda s: None,
    eval_at_samples: Sequence[int] = (),
    resume: Optional[dict[str, Any]] = None,
    checkpoint: Optional[Callable[[dict[str, Any], dict[str, Any]], None]] = None,
    checkpoint_every: int = 0,
) -> dict:
    """Train ``cfg`` and return a summary; ``report(metrics)`` is called once per optimizer step.

    Retrieval is evaluated every ``cfg.eval_every`` steps, at the end, and at the first step
    whose ``samples`` reach each of ``eval_at_samples`` (the search passes its ASHA rungs, so
    a rung that ranks trials by ``val_r1`` reads a fresh value). Evaluating changes nothing
    in training: the curve is the same with or without it.

    Every ``checkpoint_every`` steps ``checkpoint(metrics, trainer_state)`` is called instead of
    ``report(metrics)`` (one call per step either way); ``resume`` (such a state) continues
    that run where it stopped, on the same curve.

    Ends with ``end_reason`` ``completed`` (all ``max_steps`` done) or ``diverged``
    (the loss became NaN/inf; the last report carries it). Raises `UserError`
    for bad data or config before the first step, so nothing is reported then.
    """
    started = time.perf_counter()
    trainer = Trainer(cfg)
    if resume is not None:
        trainer.load_state_dict(resume)
    data = trainer.data
    log(
        f"training {cfg.model} ({cfg.pretrained or 'random init'}) on {data.name}: {len(data.labels)} images, {data.num_classes} identities "
        f"(chance CE {trainer.chance_ce:.3f}), {cfg.max_steps} steps of {cfg.images_per_step} images "
        f"on {trainer.device}; {data.task} evaluation on {len(data.test)} {cfg.eval_split} images"
    )
    for note in data.notes:
        log(note)
    pending_evals = sorted(s for s in eval_at_samples if s > trainer.step * cfg.images_per_step)
    best_ce_ema = math.inf if resume is None else resume.get("best_ce_ema", math.inf)
    metrics: dict[str, Any] = {}
    end_reason, message = "completed", ""
    while trainer.step < cfg.max_steps:
        metrics = trainer.train_step()
        diverged = not math.isfinite(metrics["loss"])
        if diverged:
            end_reason = "diverged"
            message = (
                f"loss became {metrics['loss']} at step {metrics['step']}; "
                "lower head_lr or lr_backbone, or set grad_clip"
            )
        else:
            best_ce_ema = min(best_ce_ema, metrics["ce_ema"])
            due = False  # a search rung passed since the last step
            while pending_evals and metrics["samples"] >= pending_evals[0]:
                pending_evals.pop(0)
                due = True
            if due or trainer.step == cfg.max_steps or (cfg.eval_every and trainer.step % cfg.eval_every == 0):
                metrics.update(trainer.evaluate())
        if checkpoint is not None and checkpoint_every and trainer.step % checkpoint_every == 0 and not diverged:
            checkpoint(metrics, {**trainer.state_dict(), "best_ce_ema": best_ce_ema})
        elif report is not None:
            report(metrics)
        if diverged:
            log(f"diverged: {message}")
            break

    return {
        "end_reason": end_reason,
        "message": message,
        "steps": metrics.get("step", 0),
        "samples": metrics.get("samples", 0),
        "num_classes": data.num_classes,
        "task": data.task,
        "chance_ce": trainer.chance_ce,
        "best_ce_ema": best_ce_ema if math.isfinite(best_ce_ema) else None,
        "final": metrics,
        "wall_s": time.perf_counter() - started,
    }


def _adamw(groups: list[dict]) -> torch.optim.Optimizer:
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

    def __init__(
        self,
        cfg: TrainConfig,
        out: Path,
        log_every_s: float = 5.0,
        stream=sys.stdout,
        grace_steps: int = 300,
        chance_margin: float = 0.39,
    ):
        self.cfg, self.out, self.log_every_s, self.stream = cfg, out, log_every_s, stream
        self.grace_steps, self.chance_margin = grace_steps, chance_margin
        self.rows: list[dict[str, Any]] = []  # kept for the diagnosis of a run stuck at chance
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
        self.rows.append({k: metrics[k] for k in STEP_METRICS})
        if metrics["step"] == self.grace_steps and at_chance(metrics, self.chance_margin):
            self.say_stuck()
        now = time.perf_counter()
        if now - self._last_log >= self.log_every_s or metrics["step"] == self.cfg.max_steps:
            self._last_log = now
            self._file.flush()
            print(progress_line(metrics, self.cfg.max_steps, now - self._started), file=self.stream, flush=True)

    def say_stuck(self) -> None:
        """The seed team's Go/No-Go look: still above the Go line, and the likely cause."""
        last = self.rows[-1]
        found = diagnose(self.rows)
        print(
            f"still at chance after {last['step']} steps: ce_ema {last['ce_ema']:.3f}, Go line "
            f"{last['chance_ce'] - self.chance_margin:.2f}; likely cause: {found.line() if found else 'unknown'}",
            file=self.stream,
            flush=True,
        )

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
    add_shortcut_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/train-TIMESTAMP)")
    parser.add_argument("--log-every", type=float, default=5.0, metavar="SECONDS", help="progress line interval")
    parser.add_argument("--preflight", action="store_true", help="run the search's pre-flight checks first")
    parser.add_argument(
        "--grace-steps", type=int, default=300, help="diagnose the run if it is still at chance at this step (default 300)"
    )
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig.from_dict(shortcut_values(args), base=load_cli_config(args.config, args.overrides))
        out = Path(args.out or f"runs/train-{datetime.now():%Y%m%d-%H%M%S}")
        if (out / "metrics.csv").exists():
            raise UserError(f"'{out}' already holds a run (metrics.csv); pass a new --out folder")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out '{out}' is a file; pass a folder")
        if args.preflight:
            from reid_core.preflight import preflight  # the checks build their own trainers

            preflight(cfg, log=print)
        writer = RunWriter(cfg, out, args.log_every, grace_steps=args.grace_steps)
        try:
            summary = train(cfg, writer, log=print)
        finally:
            writer.close()
    except UserError as err:
        return cli_exit(err, parser.prog)
    if summary["final"] and at_chance(summary["final"], writer.chance_margin) and summary["steps"] != args.grace_steps:
        writer.say_stuck()
        found = diagnose(writer.rows)
        summary["stuck_cause"] = found.cause if found else None
    write_json_atomic(out / "summary.json", summary)
    final = summary["final"]
    print(
        f"{summary['end_reason']} after {summary['steps']} steps ({summary['samples']} images): "
        f"ce_ema {final.get('ce_ema', float('nan')):.3f} vs chance {summary['chance_ce']:.3f}"
        + (f", {summary['task']} R@1 {final['val_r1']:.1f}" if "val_r1" in final else "")
    )
    print(f"wrote {out}/metrics.csv, {out}/summary.json, {out}/config.json")
    return 0 if summary["end_reason"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
