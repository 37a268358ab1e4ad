"""One training run's state and its optimizer step: `Trainer`, plus evaluation and device setup.

The loop around it (`reid_core.train.train`) and the plain command line live in `reid_core.train`;
tests, the pre-flight checks and checkpoints drive a `Trainer` one step at a time. Never imports ray.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from reid_core.chance import go_line
from reid_core.config import TrainConfig
from reid_core.data import EVAL_BATCH, ReIDData, Split, batches, eval_images, load_data, loader_workers
from reid_core.errors import UserError
from reid_core.head_lr import Change, Event, HeadLRChanges, HeadState
from reid_core.losses import id_loss, sdm_loss
from reid_core.metrics import retrieval_metrics
from reid_core.model import ReIDModel, build_model, context_length, parameter_groups
from reid_core.monitor import HeadMonitor
from reid_core.pretrained import check_model, resolve_pretrained
from reid_core.schedule import ema, lr_factor, scheduled_value, sdm_weight_at
from reid_core.unseen import UnseenCE, fixed_batch, take


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
            gallery = _image_features(model, data.gallery, data.image_size, device, workers)
            if data.query is not None:
                query = _image_features(model, data.query, data.image_size, device, workers)
                similarity = query @ gallery.t()
                scores = retrieval_metrics(
                    similarity.cpu(), data.query.pids, data.gallery.pids, data.query.camids, data.gallery.camids
                )
            else:
                text = [
                    model.encode_text(data.gallery.tokens[start : start + EVAL_BATCH].to(device)).float()
                    for start in range(0, len(data.gallery.tokens), EVAL_BATCH)
                ]
                similarity = nn.functional.normalize(torch.cat(text), dim=-1) @ gallery.t()
                scores = retrieval_metrics(similarity.cpu(), data.gallery.caption_pids, data.gallery.pids)
    finally:
        model.train(was_training)
    return {f"val_{k}": v for k, v in scores.items()}


def _image_features(model: ReIDModel, split: Split, size, device: torch.device, workers: int) -> torch.Tensor:
    feats = [model.encode_image(images).float() for images in eval_images(split, size, device, workers)]
    return nn.functional.normalize(torch.cat(feats), dim=-1)


# --- training ----------------------------------------------------------------------

LR_PARTS = ("head", "backbone")  # the parameter groups' name prefixes (reid_core.model.parameter_groups), each with its own LR

# The step metrics `HeadMonitor.after_step` measures, in the order train_step reports them.
HEAD_METRICS = (
    "head_weight_norm", "head_weight_change", "head_grad_norm", "feature_norm", "logit_std", "head_update",
    "head_step_per_lr", "feature_spread", "head_measured_step", "loss_scale", "skipped_steps",
)  # fmt: skip


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
        # the head's diagnostic metrics, as any loop measures them; logits passed explicitly (a planted
        # fault may compute them without the classifier module), optimizer and scaler set each step
        self.monitor = HeadMonitor(self.model.classifier, capture=False, every=cfg.monitor_every)
        self.unseen = unseen_ce(self.data, cfg.unseen_every, self.device)  # None without a held-out slice
        self.step = 0  # optimizer steps taken
        self.data_wait_s = 0.0  # seconds the step in progress has waited for its batches
        self.ce_ema: Optional[float] = None
        # the step at which the CE-only phase ended and the SDM ramp began (known in advance for sdm_start=steps)
        self.sdm_start_step: Optional[int] = cfg.ce_only_steps if cfg.sdm_start == "steps" else None
        self.head_lr_changes = HeadLRChanges(cfg)  # judges the run's own head-LR changes; train_step applies them

    @property
    def events(self) -> list[Event]:
        """The run's own head-LR changes so far (guard firings, raises), oldest first."""
        return self.head_lr_changes.events

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the same curve: only tensors and plain
        numbers, so it loads with ``torch.load(weights_only=True)``."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "ce_ema": self.ce_ema,
            "unseen_ce": self.unseen.last if self.unseen is not None else math.nan,  # repeated until the next measurement
            "sdm_start_step": -1 if self.sdm_start_step is None else self.sdm_start_step,
            **self.monitor.state_dict(),  # skipped_steps, head_weight_start
            **self.head_lr_changes.state_dict(),  # the head LR's own changes: they live in base_lr, set again on load
            "torch_rng": torch.get_rng_state(),
            "configured_lr": {part: self.configured_lr(part) for part in LR_PARTS},  # what the config said, for a restore under another
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict`: weights, optimizer moments, step, EMA, RNG and data position."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.ce_ema = state["step"], state["ce_ema"]
        if self.unseen is not None:
            self.unseen.last = state.get("unseen_ce", math.nan)
        if "sdm_start_step" in state:  # checkpoints from before sdm_start keep the config's own
            self.sdm_start_step = None if state["sdm_start_step"] < 0 else state["sdm_start_step"]
        self.monitor.load_state_dict(state)
        # The optimizer state just loaded carries the checkpointed run's base LRs. Restored under a config that
        # sets another LR (a PBT exploit: a copy of one trial's checkpoint with a perturbed head_lr), this
        # config's LR applies from here; a resume under the same config keeps the checkpoint's.
        saved = state.get("configured_lr")
        for part in LR_PARTS:
            if saved is not None and saved[part] != self.configured_lr(part):
                self._set_base_lr(part, self.base_lr(part))
        self.head_lr_changes.load_state_dict(state)
        if "head_lr_scale" in state:  # the head: the config's LR times the run's own changes, so the LR and the events agree
            for group in self._head_groups():
                group["base_lr"] = self.base_lr("head")
        # The micro-batch stream is a pure function of its seed and of how many batches were drawn:
        # drawing the same number again puts it where the checkpointed run was.
        for _ in range(self.step * self.cfg.grad_accum_steps):
            next(self.stream)
        torch.set_rng_state(state["torch_rng"])

    def configured_lr(self, part: str) -> float:
        """The base LR the config gives ``part`` ('head' or 'backbone') at the next step: its schedule's value
        (``head_lr_schedule``, ``backbone_lr_schedule``), else ``head_lr`` / ``backbone_lr``."""
        cfg = self.cfg
        if part == "head":
            return scheduled_value(cfg.head_lr_schedule, self.step, cfg.head_lr)
        return scheduled_value(cfg.backbone_lr_schedule, self.step, cfg.backbone_lr)

    def base_lr(self, part: str) -> float:
        """The base LR ``part`` trains at: the configured one, for the head times the run's own changes (head_guard, head_lr_raise)."""
        return self.configured_lr(part) * (self.head_lr_changes.scale if part == "head" else 1.0)

    def _set_base_lr(self, part: str, value: float) -> None:
        for group in self.optimizer.param_groups:
            if group.get("name", "").startswith(part):
                group["base_lr"] = value

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def backward(self, sdm_weight: float) -> torch.Tensor:
        """Run one optimizer step's micro-batches forward and backward; gradients are left in ``.grad``.

        Each micro-batch loss is divided by ``grad_accum_steps``, so the accumulated gradient is
        that of the mean loss over all the step's images. Returns the micro-batch means of
        (ce, sdm, loss); each micro-batch's features and logits go to ``self.monitor``.
        """
        cfg, model = self.cfg, self.model
        sums = torch.zeros(3)
        for _ in range(cfg.grad_accum_steps):
            waited = time.perf_counter()
            images, labels, tokens = next(self.stream)
            self.data_wait_s += time.perf_counter() - waited  # the loader's pace: data_wait_share
            with self._autocast():
                features = model.encode_image(images)  # raw features: the BNNeck needs them unnormalised
                logits = model.identity_logits(features)
                ce = id_loss(logits, labels, cfg.label_smoothing)
                sdm = torch.zeros((), device=self.device)
                if sdm_weight > 0:  # CE-only phase: the text encoder is not even run
                    sdm = sdm_loss(features, model.encode_text(tokens), labels, cfg.logit_scale)
                loss = ce + sdm_weight * sdm
            if self.monitor.measuring:  # (1 step in cfg.monitor_every)
                self.monitor.observe(logits, features)  # before backward: its tensors are still in cache
            self.scaler.scale(loss / cfg.grad_accum_steps).backward()
            with torch.no_grad():
                sums += torch.stack([ce, sdm, loss]).float().cpu()
        return sums / cfg.grad_accum_steps

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; returns its metrics (``reid_core.schema.STEP_METRICS``)."""
        cfg, optimizer, scaler = self.cfg, self.optimizer, self.scaler
        started = time.perf_counter()
        self.data_wait_s = 0.0  # seconds this step waited for its batches (`backward`)
        for part, schedule in (("head", cfg.head_lr_schedule), ("backbone", cfg.backbone_lr_schedule)):
            if any(start == self.step for start, _ in schedule or ()):  # a schedule entry starts at this step
                self._set_base_lr(part, self.base_lr(part))
        factor = lr_factor(self.step, cfg.lr_warmup_steps, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        sdm_weight = 0.0  # CE-only until the phase's end is known (sdm_start=go_line: until CE leaves chance)
        if self.sdm_start_step is not None:
            sdm_weight = sdm_weight_at(self.step, self.sdm_start_step, cfg.sdm_ramp_steps, cfg.sdm_weight)
        if not self.data.has_captions:
            sdm_weight = 0.0  # no captions (Market-1501): identity CE only

        monitor = self.monitor
        monitor.optimizer, monitor.scaler = optimizer, scaler  # as they are now (a test may swap either)
        head_before = self.head_state() if self.head_lr_changes.guard else None  # the guard's candidate best head
        ce, sdm, loss = self.backward(sdm_weight).tolist()

        scaler.unscale_(optimizer)  # no-op without fp16; makes grad norms real numbers
        monitor.after_backward()  # the head's gradient, unscaled, before clipping
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)  # None, not 0: AdamW leaves grad-less params (idle text tower) alone
        self.step += 1
        head = monitor.after_step()

        finite = math.isfinite(ce) and math.isfinite(loss)
        previous_ce_ema = self.ce_ema
        # beta per batch of images: a step of k micro-batches weighs k batches, so ce_ema spans the same
        # images at any accumulation (the stopping rule and ASHA compare trials at equal images)
        self.ce_ema = ema(self.ce_ema, ce, cfg.ce_ema_beta**cfg.grad_accum_steps) if finite else float("nan")
        capped = cfg.sdm_start_cap is not None and self.step >= cfg.sdm_start_cap
        if self.sdm_start_step is None and (self.ce_ema <= go_line(self.chance_ce, cfg.chance_margin) or capped):
            self.sdm_start_step = self.step  # CE has left chance (or the cap is reached): the ramp starts next step
        unseen = self.unseen
        if unseen is not None and unseen.due(self.step):  # after the update: the head as the next step will use it
            unseen.measure(self.model, lambda x: self.model.identity_logits(self.model.encode_image(x)), self._autocast())
        metrics = {
            "step": self.step,
            "samples": self.step * cfg.images_per_step,
            "ce": ce,
            "ce_ema": self.ce_ema,
            **({"unseen_ce": unseen.last} if unseen is not None else {}),
            "sdm": sdm,
            "loss": loss,
            "sdm_weight": sdm_weight,
            "head_lr_applied": head["head_lr_applied"],
            "backbone_lr_applied": self._backbone_lr_applied(),
            **{key: head[key] for key in HEAD_METRICS},
            "chance_ce": self.chance_ce,
            "images_per_s": cfg.images_per_step / max(time.perf_counter() - started, 1e-9),
            "data_wait_share": self.data_wait_s / max(time.perf_counter() - started, 1e-9),
        }
        # the guard (CE ran away: head restored, LR lowered) and the raise (lr_too_low after a watch window)
        change = self.head_lr_changes.judge(metrics, previous_ce_ema, self.configured_lr("head"), head_before)
        if change is not None:
            self._apply(change, metrics)
        metrics.update(self.head_lr_changes.counts())
        return metrics

    # --- the head-LR changes, applied: the judge (reid_core.head_lr) decides, the trainer owns what changes ---

    def _apply(self, change: Change, metrics: dict[str, Any]) -> None:
        if change.restore is not None:  # the guard: the head as it was at the run's lowest ce_ema, and that CE
            self.load_head_state(change.restore)
            self.ce_ema = metrics["ce_ema"] = change.ce_ema  # the rule and ASHA read the restored head's CE
        for group in self._head_groups():
            group["base_lr"] *= change.factor  # the schedule multiplies base_lr each step (train_step)

    def _head_params(self) -> list[nn.Parameter]:
        return [p for m in self.model.head_modules() for p in m.parameters()]

    def _head_groups(self) -> list[dict[str, Any]]:
        # by the parameters, not the groups' names: a planted fault may rebuild the optimizer without names
        ids = {id(p) for p in self._head_params()}
        return [g for g in self.optimizer.param_groups if any(id(p) in ids for p in g["params"])]

    def head_state(self) -> HeadState:
        """The head's weights and buffers and their AdamW moments, copied (~3x the head's size)."""
        with torch.no_grad():
            modules = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.model.head_modules()]
            state = self.optimizer.state
            # .get: optimizer.state is a defaultdict, and a frozen parameter (the BNNeck bias) must not gain an entry
            moments = [{k: v.clone() if torch.is_tensor(v) else v for k, v in state.get(p, {}).items()} for p in self._head_params()]
        return {"modules": modules, "moments": moments}

    def load_head_state(self, saved: HeadState) -> None:
        """Put the head back as `head_state` copied it (weights, buffers, AdamW moments); ``saved`` stays unchanged."""
        with torch.no_grad():
            for module, values in zip(self.model.head_modules(), saved["modules"]):
                module.load_state_dict(values)
            state = self.optimizer.state
            for param, moments in zip(self._head_params(), saved["moments"]):
                if moments:  # a parameter with no moments yet keeps none
                    state[param] = {k: v.clone() if torch.is_tensor(v) else v for k, v in moments.items()}
                else:
                    state.pop(param, None)

    def _backbone_lr_applied(self) -> float:
        """The LR the optimizer used this step for the backbone's first group (the head's is the monitor's):
        read from its parameter groups, so a schedule shows as it is."""
        classifier = self.model.classifier.weight
        for group in self.optimizer.param_groups:
            if group.get("name", "").startswith("backbone") and not any(p is classifier for p in group["params"]):
                return float(group["lr"])
        return 0.0

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.data, self.device, self.dtype, self.workers)


def unseen_ce(data: ReIDData, every: int, device: torch.device) -> Optional[UnseenCE]:
    """The unseen-image CE's fixed batch (`reid_core.unseen`), decoded once; None when nothing is held out."""
    if data.unseen is None:
        return None
    pick = fixed_batch(len(data.unseen))
    images = torch.cat(list(eval_images(take(data.unseen, pick), data.image_size, device)))
    return UnseenCE(images, data.unseen_labels[pick], every)


def _adamw(groups: list[dict]) -> torch.optim.Optimizer:
    # Fused AdamW: the 49408-row token embedding is most of a small CLIP's parameters and the
    # per-parameter foreach update cost ~40% of a CPU step; fused does it in one pass.
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype the fused kernel does not cover
        return torch.optim.AdamW(groups)
