"""`HeadMonitor`: the identity head's diagnostic metrics from any PyTorch loop, in one or two calls.

The seed team found why their CE sat at 5.99 by printing the classifier's weight norm and
gradient norm every 100 steps. The monitor measures what `reid_core.diagnostics.diagnose` reads,
at every step, for any loop (ours, `reid_core.trainer.Trainer`, uses it too: one source of these
numbers). No Ray, nothing to subclass::

    monitor = HeadMonitor(model.bn_neck.classifier, optimizer, neck=model.bn_neck)  # once
    for images, labels in loader:
        loss = criterion(model(images), labels)
        loss.backward()
        monitor.after_backward()            # the head's gradient (after scaler.unscale_ with fp16)
        optimizer.step(); optimizer.zero_grad()
        report({"step": ..., "samples": ..., "ce": loss.item(), "num_classes": C, **monitor.after_step()})

What it returns (``after_step``; names as in ``reid_core.schema.STEP_METRICS``):

- ``head_weight_norm``, ``head_weight_change`` (distance from the weights at construction, in
  units of their norm), ``head_grad_norm`` (read by ``after_backward``),
- ``head_update`` (``|W_after - W_before| / |W_after|`` of this step's optimizer step) and
  ``head_step_per_lr`` (the root-mean-square change per classifier weight over the LR applied:
  AdamW moves each weight by ~0.1-0.4 of its LR; far less when the gradient is swamped by its eps),
  from a copy of the weights taken by ``after_backward`` (0 when it was not called this step),
- ``feature_spread``: ``|F - mean_batch F| / |F|`` of the features entering the head (0: every image
  of the batch gives the same features, a collapsed backbone; ~0.2-1 on healthy runs), mean over passes,
- ``logit_std`` and ``feature_norm``: means over the forward passes since the last step (every
  micro-batch of an accumulated step), captured by forward hooks on ``classifier`` (its output)
  and ``neck`` (its input: the raw features; without ``neck``, the classifier's input). Only
  passes with gradients enabled count, so evaluation under ``torch.no_grad()`` is left out. A
  loop that computes logits without calling the module passes them to `observe` instead;
- ``head_lr_applied``: the LR of the optimizer's first parameter group holding the classifier
  weight (0 when none does), ``head_in_optimizer`` (whether one does),
- ``loss_scale`` and ``skipped_steps``: with ``scaler`` (a ``torch.amp.GradScaler``), its scale
  and the steps it skipped (its scale fell across ``scaler.update()``); 1 and 0 without.

**How often.** The LR, AMP and optimizer keys are read at every step. The tensor statistics (the
head's weight norm, change and update, gradient norm, logit spread, feature norm and spread: `MEASURED_KEYS`) are
measured at the first step and then every ``every`` steps (default `DEFAULT_EVERY` = 5: steps 1,
5, 10, ...); the steps between repeat the last measurement, and ``head_measured_step`` says which
step it came from. The diagnosis compares a run's first and latest measurements over hundreds of
steps, and the seed team printed these every 100 steps; ``every=1`` measures every step. Why not
every step by default: on a CPU each of these ~9 small reductions costs 25-60 us right after a
forward or backward (the head's weights, gradient and start copy are read from memory the step
has evicted), about 2% of the tiny model's 15 ms step; at ``every=5`` the monitor adds under 1%
(``benchmarks/monitor_cost.py``, BENCHMARKS.md section 7). On a GPU they are asynchronous launches.

The first ``after_backward`` (and the first ``after_step``) also return the pre-flight evidence (`PREFLIGHT_KEYS`):
``head_in_optimizer``, ``logit_gain`` (how much 4x the classifier's weights widen its logits:
~4 for a linear head, ~1 for a cosine one without a scale) and, when labels were passed to
`observe` or `observe_labels`, ``label_min`` / ``label_max`` against ``num_classes`` (the classifier's rows). A user
training function that reports them at its first step gets the search's pre-flight checks
(`reid_core.contract`).
"""

from __future__ import annotations

import math

from typing import Any, Optional

import torch
from torch import nn

PREFLIGHT_KEYS = ("head_in_optimizer", "head_grad_norm", "logit_gain", "label_min", "label_max", "num_classes")
GAIN_SCALE = 4.0  # the pre-flight's test: scale the classifier's weights by this, see how far the logits follow
DEFAULT_EVERY = 5  # measure the tensor statistics at step 1 and every this many steps (see "How often")
# measured every `every` steps and repeated between (the rest of `after_step`'s keys are read every step)
MEASURED_KEYS = (
    "head_weight_norm", "head_weight_change", "head_grad_norm", "feature_norm", "logit_std", "head_update", "head_step_per_lr",
    "feature_spread",
)  # fmt: skip


class HeadMonitor:
    """Diagnostic metrics of one identity classifier; see the module docstring for the calls."""

    def __init__(
        self,
        classifier: nn.Module | nn.Parameter,
        optimizer: Optional[torch.optim.Optimizer] = None,
        *,
        scaler: Optional[torch.amp.GradScaler] = None,
        neck: Optional[nn.Module] = None,
        capture: bool = True,
        every: int = DEFAULT_EVERY,
    ):
        """``classifier``: the module whose ``weight`` are the class rows (or that weight itself);
        ``optimizer`` and ``scaler`` may be replaced later by assigning the attributes;
        ``capture``: record logits and features with forward hooks (``False``: call `observe`);
        ``every``: measure the tensor statistics at the first step and every this many steps."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"HeadMonitor(every={every!r}): must be an integer >= 1 (1 measures every step)")
        self.every = every
        self.steps = 0  # after_step calls so far: the step in progress is steps + 1
        self.measuring = True  # whether the step in progress measures (the first always does)
        self._measured: dict[str, float] = {}  # the last measurement, repeated until the next
        self._lr_where: Optional[tuple[int, int, int, int]] = None  # (optimizer id, groups, group, position)
        self.module = classifier if isinstance(classifier, nn.Module) else None
        self.weight: torch.Tensor = classifier.weight if isinstance(classifier, nn.Module) else classifier
        self.optimizer = optimizer
        self.scaler = scaler
        self.num_classes = int(self.weight.shape[0])
        self._weight = self.weight.detach()
        self.weight_start = self.weight.detach().clone()
        self.weight_start_norm = max(self.weight_start.norm().item(), 1e-12)
        self.skipped_steps = 0
        self.head_grad_norm = 0.0
        self._grad_norm: Optional[torch.Tensor] = None
        self._stats: list[tuple[Optional[torch.Tensor], torch.Tensor]] = []  # per forward pass: (feature_norm, logit_std)
        self._spreads: list[torch.Tensor] = []  # per forward pass with features: feature_spread (0-d)
        self._weight_before = torch.empty_like(self._weight)  # the weights before this step's update (head_update)
        self._before_taken = False
        self._pending_features: Optional[torch.Tensor] = None
        self._first_input: Optional[torch.Tensor] = None  # the classifier's input at the first pass (pre-flight)
        self._labels: Optional[tuple[int, int]] = None
        self._scale_before = 1.0
        self._first = True
        self._evidence: dict[str, Any] = {}
        self._hooks = []
        if capture and self.module is not None:
            self._hooks.append(self.module.register_forward_hook(self._on_classifier))
            if neck is not None:
                self._hooks.append(neck.register_forward_pre_hook(self._on_neck))

    # --- what one step saw ---------------------------------------------------------

    def observe(
        self,
        logits: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> None:
        """Record one forward pass (micro-batch): its logits, the features entering the head, its labels."""
        if labels is not None:
            self.observe_labels(labels)
        if not self.measuring:
            return
        with torch.no_grad():  # 0-d tensors, read once per step: no device sync per micro-batch
            feature_norm = features.float().norm(dim=1).mean() if features is not None else None
            self._stats.append((feature_norm, logits.float().std()))
            if features is not None and features.dim() == 2 and len(features) >= 2:
                f = features.float()
                self._spreads.append((f - f.mean(0)).norm() / f.norm().clamp_min(1e-30))

    def observe_labels(self, labels: torch.Tensor) -> None:
        """Labels of a micro-batch of the first step, for the pre-flight's range check (later calls: no-op)."""
        if self._first:
            low, high = int(labels.min()), int(labels.max())
            self._labels = (low, high) if self._labels is None else (min(low, self._labels[0]), max(high, self._labels[1]))

    def _on_neck(self, module, args) -> None:
        if self.measuring and torch.is_grad_enabled() and args:
            self._pending_features = args[0]

    def _on_classifier(self, module, args, output) -> None:
        if not self.measuring or not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
            return
        head_input = args[0] if args else None
        if self._first and head_input is not None and self._first_input is None:
            self._first_input = head_input.detach()
        features = self._pending_features if self._pending_features is not None else head_input
        self._pending_features = None
        self.observe(output, features)

    # --- the two calls -------------------------------------------------------------

    def after_backward(self) -> dict[str, Any]:
        """Call once per optimizer step after the last ``backward`` (after ``scaler.unscale_``, if any)
        and before ``optimizer.step()``: takes the head's gradient norm (read, with the rest, by
        ``after_step``); the first call returns the pre-flight keys, later calls nothing."""
        scaler = self.scaler
        if scaler is not None and scaler.is_enabled():
            self._scale_before = scaler.get_scale()
        if not self.measuring:
            return {}
        grad = self.weight.grad
        self._grad_norm = grad.norm() if grad is not None else None  # a 0-d tensor: no sync here
        self._weight_before.copy_(self._weight)  # for head_update: the step's change, read by after_step
        self._before_taken = True
        if scaler is not None and scaler.is_enabled():
            if self._grad_norm is not None and not _unscaled(scaler, self.optimizer):
                self._grad_norm = self._grad_norm / self._scale_before  # the true gradient's norm
        if not self._first:
            return {}
        self._first = False
        self.head_grad_norm = self._grad_norm.item() if self._grad_norm is not None else 0.0
        self._evidence = {"head_grad_norm": self.head_grad_norm, **self.preflight_evidence()}
        return dict(self._evidence)

    def after_step(self) -> dict[str, Any]:
        """Call once per optimizer step after ``optimizer.step()`` (and ``scaler.update()``): every metric."""
        scaler = self.scaler
        scaled = scaler is not None and scaler.is_enabled()
        if scaled and scaler.get_scale() < self._scale_before:
            self.skipped_steps += 1  # GradScaler found inf/nan gradients and skipped the update
        if self.measuring:
            self._measured = self._measure()
        self.steps += 1
        self.measuring = self._measures(self.steps + 1)
        lr = self.head_lr_applied()
        evidence, self._evidence = self._evidence, {}  # the first step's pre-flight keys, once
        return {
            **evidence,
            "head_lr_applied": math.nan if lr is None else lr,  # NaN: no optimizer group holds the head (0.0: one does, at LR 0)
            "head_in_optimizer": lr is not None,
            **self._measured,
            "loss_scale": scaler.get_scale() if scaled else 1.0,
            "skipped_steps": self.skipped_steps,
        }

    def _measures(self, step: int) -> bool:
        """Whether step ``step`` (1-based) measures the tensor statistics: the first and every ``every``-th."""
        return step == 1 or step % self.every == 0

    def _measure(self) -> dict[str, Any]:
        """The tensor statistics (`MEASURED_KEYS`) of the step just taken, and ``head_measured_step``."""
        # every number of the step in one read (one device sync): each tiny op costs ~10-30 us on a CPU
        w = self._weight  # detached alias: no autograd bookkeeping, sees the optimizer's in-place updates
        grad_norm = self._grad_norm if self._grad_norm is not None else torch.zeros((), device=w.device)
        values = [grad_norm, w.norm(), torch.dist(w, self.weight_start), *self._means(w.device)]
        values += [torch.dist(w, self._weight_before), self._spread(w.device)]  # head_update, feature_spread
        values = [v if v.dtype == torch.float32 else v.float() for v in values]
        grad_norm, weight_norm, distance, feature_norm, logit_std, update, spread = torch.stack(values).tolist()
        self.head_grad_norm, self._grad_norm = grad_norm, None
        update, self._before_taken = (update if self._before_taken else 0.0), False
        lr = self.head_lr_applied()
        return {
            "head_weight_norm": weight_norm,
            "head_weight_change": distance / self.weight_start_norm,
            "head_grad_norm": grad_norm,
            "feature_norm": feature_norm,
            "logit_std": logit_std,
            "head_update": update / max(weight_norm, 1e-30),
            "head_step_per_lr": update / self.weight.numel() ** 0.5 / lr if lr else 0.0,
            "feature_spread": spread,
            "head_measured_step": self.steps + 1,
        }

    # --- pieces ----------------------------------------------------------------------

    def _means(self, device: torch.device) -> list[torch.Tensor]:
        """Mean feature norm and logit std (0-d float32) over the passes since the last step (NaN where none)."""
        stats, self._stats = self._stats, []

        def nan() -> torch.Tensor:
            return torch.full((), float("nan"), device=device)

        if not stats:
            return [nan(), nan()]
        if len(stats) == 1:  # one micro-batch: the numbers themselves
            feature_norm, logit_std = stats[0]
            return [nan() if feature_norm is None else feature_norm.float().to(device), logit_std.float().to(device)]
        rows = torch.stack([torch.stack([nan() if f is None else f.float().to(device), s.float().to(device)]) for f, s in stats]).cpu()
        total = torch.zeros(2)
        for row in rows:  # in order, in float32 on the CPU: the sums the Trainer always reported
            total += row
        mean = (total / len(stats)).to(device)
        return [mean[0], mean[1]]

    def _spread(self, device: torch.device) -> torch.Tensor:
        """Mean feature_spread over the passes since the last step (NaN where none had features)."""
        spreads, self._spreads = self._spreads, []
        if not spreads:
            return torch.full((), float("nan"), device=device)
        return torch.stack([s.to(device) for s in spreads]).mean()

    def head_lr_applied(self) -> Optional[float]:
        """The LR of the first optimizer group holding the classifier weight; None when none holds it."""
        optimizer = self.optimizer
        if optimizer is None:
            return None
        groups = optimizer.param_groups
        where = self._lr_where  # where it was last found: checked in O(1), searched again when it moved
        if where is not None and where[:2] == (id(optimizer), len(groups)):
            if where[2] < 0:
                return None
            params = groups[where[2]]["params"]
            if where[3] < len(params) and params[where[3]] is self.weight:
                return float(groups[where[2]]["lr"])
        found = next(
            ((g, i) for g, group in enumerate(groups) for i, p in enumerate(group["params"]) if p is self.weight), (-1, -1)
        )
        self._lr_where = (id(optimizer), len(groups), *found)
        return None if found[0] < 0 else float(groups[found[0]]["lr"])

    def preflight_evidence(self) -> dict[str, Any]:
        """What the pre-flight checks read (`PREFLIGHT_KEYS`), from what this step saw."""
        out: dict[str, Any] = {"head_in_optimizer": self.head_lr_applied() is not None, "num_classes": self.num_classes}
        if self._first_input is not None and self.module is not None:
            out["logit_gain"] = self._logit_gain(self._first_input)
            self._first_input = None
        if self._labels is not None:
            out["label_min"], out["label_max"] = self._labels
        return out

    def _logit_gain(self, head_input: torch.Tensor) -> float:
        """std(logits with GAIN_SCALE x the weights) / std(logits): the classifier's own forward, out of place."""
        module = self.module
        with torch.no_grad():
            was_training = module.training
            module.eval()
            try:
                plain = torch.func.functional_call(module, {"weight": self.weight}, (head_input,)).float().std()
                scaled = torch.func.functional_call(module, {"weight": self.weight * GAIN_SCALE}, (head_input,))
                gain = (scaled.float().std() / plain.clamp_min(1e-30)).item()
            finally:
                module.train(was_training)
        return gain

    def state_dict(self) -> dict[str, Any]:
        return {
            "head_weight_start": self.weight_start,
            "skipped_steps": self.skipped_steps,
            "head_monitor_steps": self.steps,
            "head_measured": dict(self._measured),  # repeated until the next measurement, after a resume too
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight_start = state["head_weight_start"].to(self.weight.device)
        self._weight = self.weight.detach()
        self._weight_before = torch.empty_like(self._weight)
        self.weight_start_norm = max(self.weight_start.norm().item(), 1e-12)
        self.skipped_steps = state["skipped_steps"]
        self._first = False  # a resumed run is past its first step
        # on the same measuring steps as the run it continues (checkpoints from before `every`: from its step)
        self.steps = int(state.get("head_monitor_steps", state.get("step", 0)))
        self.measuring = self._measures(self.steps + 1)
        self._measured = dict(state.get("head_measured", {}))

    def close(self) -> None:
        """Remove the forward hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def _unscaled(scaler: torch.amp.GradScaler, optimizer: Optional[torch.optim.Optimizer]) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` ran this step (the gradients hold true values)."""
    if optimizer is None:
        return False
    states = getattr(scaler, "_per_optimizer_states", None)  # torch's own bookkeeping; no public accessor
    if states is None or id(optimizer) not in states:
        return False
    stage = states[id(optimizer)].get("stage")
    return getattr(stage, "name", "") == "UNSCALED"
