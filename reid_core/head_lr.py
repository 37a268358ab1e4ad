"""The run's own head-LR changes: the automatic fallback (`head_guard`) and the progressive raise.

The seed team asked for both (issue 18): "if the weights grow too fast, lower the learning rate by
itself" and "start the head at 5e-3, watch 100 steps, then decide whether to raise it to 1e-2".
`HeadLRChanges` does both inside a `reid_core.trainer.Trainer`, once per optimizer step; every change is
an `Event` (step, evidence, head LR before and after), counted in the step metrics
``head_guard_firings`` and ``head_lr_raises``.

**The guard** fires when ``ce_ema`` is above ``head_guard_ce_ratio x log(C)`` and rose over the
step. The seed's literal trigger (the head's norm grew more than 10x) cannot work with AdamW: Adam
moves every weight by about the LR per step whatever the gradient, so the norm grows about linearly
at any LR, and a healthy head grows ~50x from its std-0.001 init in 150 steps. CE separates them:
a head that knows nothing scores log C; a healthy run never goes far above it (shuffled labels,
the worst fault measured, 1.07x); a runaway head is confidently wrong (head LR 30 on the default: CE
334 at step 2, 60,696 at step 80). A CE of 2 log C needs logits spread over more than log C nats,
so the logit spread adds nothing to the CE test; it is quoted in the evidence. When it fires, the
head (BNNeck and classifier, their AdamW moments) goes back to its state at the run's lowest
``ce_ema`` so far, ``ce_ema`` with it (that head's CE), and the head LR is multiplied by
``head_guard_factor``. The backbone is not restored: it trains at ``backbone_lr``, which the
guard does not touch. A guard firing ends the raise schedule (raising again would walk back
towards the LR that ran away).

**The raise**: every ``head_lr_watch_steps`` steps, while ``ce_ema`` is above the Go line and
`reid_core.diagnostics.diagnose` on the run's metrics so far says ``lr_too_low``, the head LR is
multiplied by ``head_lr_raise``, up to ``head_lr_raise_cap``.

Both change the head groups' ``base_lr`` (the LR schedule multiplies it each step), so a
checkpoint (`HeadLRChanges.state_dict`) carries them. Never imports ray.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch

from reid_core.chance import go_line
from reid_core.diagnostics import diagnose
from reid_core.schema import GUARD_FIRINGS, LR_RAISES, STEP_METRICS

if TYPE_CHECKING:
    from reid_core.trainer import Trainer

GUARD = "head_guard"  # an Event's kind: the guard lowered the head LR
RAISE = "head_lr_raise"  # an Event's kind: the progressive schedule raised it
COUNTS = {GUARD: GUARD_FIRINGS, RAISE: LR_RAISES}  # kind -> its step metric (a running count)


@dataclass(frozen=True)
class Event:
    kind: str  # GUARD or RAISE
    step: int  # the optimizer step after which the LR changed (the next step trains at lr_after)
    lr_before: float  # head LR before the change (before the schedule's warm-up/cosine factor)
    lr_after: float
    evidence: str  # the numbers it rests on

    def line(self) -> str:
        what = "head guard fired" if self.kind == GUARD else "head LR raised"
        return f"{what} at step {self.step}: head_lr {self.lr_before:.3g} -> {self.lr_after:.3g} ({self.evidence})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def runaway(ce_ema: float, previous_ce_ema: Optional[float], chance_ce: float, ce_ratio: float) -> bool:
    """The guard's test: ``ce_ema`` far above chance (``ce_ratio x log C``) and rising."""
    if previous_ce_ema is None or not math.isfinite(ce_ema):  # NaN/inf: the run has diverged; not the guard's
        return False
    return ce_ema > ce_ratio * chance_ce and ce_ema > previous_ce_ema


class HeadLRChanges:
    """The guard and the raise of one `Trainer`; ``before_step`` and ``after_step`` around each step."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer  # read live: a test or a planted fault may swap its optimizer
        cfg = trainer.cfg
        self.guard = cfg.head_guard
        self.raising = cfg.head_lr_raise > 1
        self.scale = 1.0  # the head LR now / cfg.head_lr: what the run's own changes multiplied it by
        self.events: list[Event] = []
        self._best: Optional[dict[str, Any]] = None  # guard: the head at the lowest ce_ema so far
        self._pending: Optional[dict[str, Any]] = None  # guard: the head before this step
        self._watched: list[dict[str, Any]] = []  # raise: the first row, then the rows since the last decision

    @property
    def head_lr(self) -> float:
        return self.trainer.configured_lr("head") * self.scale  # configured: head_lr, or head_lr_schedule's value now

    def count(self, kind: str) -> int:
        return sum(e.kind == kind for e in self.events)

    # --- around each step -----------------------------------------------------------------

    def before_step(self) -> None:
        if self.guard:  # the head this step's CE is measured on: a candidate for the best state
            self._pending = self._head_state()

    def after_step(self, metrics: dict[str, Any], previous_ce_ema: Optional[float]) -> None:
        """Judge the step (``metrics``, as `Trainer.train_step` reports it); apply a change; add the counts."""
        ce_ema, step = metrics["ce_ema"], metrics["step"]
        if self.guard:
            if math.isfinite(ce_ema) and (self._best is None or ce_ema < self._best["ce_ema"]):
                self._best = {**self._pending, "ce_ema": ce_ema, "step": step}
            if runaway(ce_ema, previous_ce_ema, metrics["chance_ce"], self.trainer.cfg.head_guard_ce_ratio):
                self._fire(metrics, previous_ce_ema)
        if self.raising and not self.count(GUARD):
            self._watch(metrics)
        metrics.update({name: self.count(kind) for kind, name in COUNTS.items()})

    def _fire(self, metrics: dict[str, Any], previous_ce_ema: float) -> None:
        cfg, best = self.trainer.cfg, self._best
        evidence = (
            f"ce_ema {metrics['ce_ema']:.4g} > {cfg.head_guard_ce_ratio:g} x chance {metrics['chance_ce']:.3g} and rising "
            f"(from {previous_ce_ema:.4g}); ce {metrics['ce']:.4g}; logit std {metrics['logit_std']:.3g} and "
            f"head weight norm {metrics['head_weight_norm']:.3g} at step {metrics.get('head_measured_step', metrics['step'])}"
        )  # the monitor measures those every monitor_every steps
        if best is not None:
            self._load_head_state(best)
            self.trainer.ce_ema = best["ce_ema"]
            metrics["ce_ema"] = best["ce_ema"]  # the run's CE is now that head's: the rule and ASHA read this
            evidence += f"; head restored to step {best['step']} (ce_ema {best['ce_ema']:.4g})"
        self._change(GUARD, metrics["step"], cfg.head_guard_factor, evidence)

    def _watch(self, metrics: dict[str, Any]) -> None:
        cfg = self.trainer.cfg
        self._watched.append({k: metrics[k] for k in STEP_METRICS if k in metrics})
        if metrics["step"] % cfg.head_lr_watch_steps:
            return
        rows, self._watched = self._watched, self._watched[:1]  # keep the first row: the diagnosis's start
        cap = math.inf if cfg.head_lr_raise_cap is None else cfg.head_lr_raise_cap
        # Learning already, or at the cap: nothing to decide.
        if metrics["ce_ema"] <= go_line(metrics["chance_ce"]) or self.head_lr >= cap:
            return
        found = diagnose(rows, head_lr=self.head_lr, backbone_lr=cfg.backbone_lr)
        if found is None or found.cause != "lr_too_low":
            return
        factor = min(cfg.head_lr_raise, cap / self.head_lr)
        self._change(RAISE, metrics["step"], factor, f"{found.cause}: {found.evidence}")

    def _change(self, kind: str, step: int, factor: float, evidence: str) -> None:
        before = self.head_lr
        self.scale *= factor
        for group in self._head_groups():
            group["base_lr"] *= factor  # the schedule multiplies base_lr each step (Trainer.train_step)
        self.events.append(Event(kind, step, before, self.head_lr, evidence))

    # --- the head's state ---------------------------------------------------------------------

    def _head_params(self) -> list[torch.nn.Parameter]:
        return [p for m in self.trainer.model.head_modules() for p in m.parameters()]

    def _head_groups(self) -> list[dict[str, Any]]:
        ids = {id(p) for p in self._head_params()}
        return [g for g in self.trainer.optimizer.param_groups if any(id(p) in ids for p in g["params"])]

    def _head_state(self) -> dict[str, Any]:
        """The head's weights and buffers and their AdamW moments, copied (~3x the head's size)."""
        with torch.no_grad():
            modules = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.trainer.model.head_modules()]
            state = self.trainer.optimizer.state
            # .get: optimizer.state is a defaultdict, and a frozen parameter (the BNNeck bias) must not gain an entry
            moments = [{k: v.clone() if torch.is_tensor(v) else v for k, v in state.get(p, {}).items()} for p in self._head_params()]
        return {"modules": modules, "moments": moments}

    def _load_head_state(self, saved: dict[str, Any]) -> None:
        with torch.no_grad():
            for module, values in zip(self.trainer.model.head_modules(), saved["modules"]):
                module.load_state_dict(values)
            state = self.trainer.optimizer.state
            for param, moments in zip(self._head_params(), saved["moments"]):
                if moments:  # a parameter with no moments yet keeps none
                    state[param] = {k: v.clone() if torch.is_tensor(v) else v for k, v in moments.items()}
                else:
                    state.pop(param, None)

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, strings and tensors (``torch.load(weights_only=True)`` reads them)."""
        return {
            "head_lr_scale": self.scale,
            "head_lr_events": [e.to_dict() for e in self.events],
            "head_guard_best": self._best,
            "head_lr_watched": self._watched,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict`; the head groups' ``base_lr`` is set from the config's ``head_lr``
        times the run's own changes, so a checkpoint's LR and its events always agree."""
        if "head_lr_scale" not in state:  # a checkpoint from before the guard: no changes made
            return
        self.scale = state["head_lr_scale"]
        self.events = [Event(**e) for e in state["head_lr_events"]]
        self._best, self._watched = state["head_guard_best"], list(state["head_lr_watched"])
        for group in self._head_groups():
            group["base_lr"] = self.head_lr
