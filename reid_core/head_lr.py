"""The run's own head-LR changes: the automatic fallback (`head_guard`) and the progressive raise.

The seed team asked for both (issue 18): "if the weights grow too fast, lower the learning rate by
itself" and "start the head at 5e-3, watch 100 steps, then decide whether to raise it to 1e-2".
`HeadLRChanges` judges both once per optimizer step and returns each decision as a `Change`;
`reid_core.trainer.Trainer` applies it (the head's state, its LR, the run's ``ce_ema``). The judge keeps
only its own record: every change is an `Event` (step, evidence, head LR before and after), counted in
the step metrics ``head_guard_firings`` and ``head_lr_raises``.

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

**The raise**: every ``head_lr_watch_steps`` steps, while ``ce_ema`` is above the run's Go line
(``log(C) - chance_margin``) and `reid_core.diagnostics.diagnose` on the run's metrics so far (with
its ``label_smoothing`` and ``chance_margin``) says ``lr_too_low``, the head LR is multiplied by
``head_lr_raise``, up to ``head_lr_raise_cap``.

Both multiply the head groups' ``base_lr`` (the LR schedule multiplies it each step), so a
checkpoint (`HeadLRChanges.state_dict`) carries them. Neither torch nor ray: the head's state is
the trainer's, opaque here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from reid_core.chance import go_line
from reid_core.config import TrainConfig
from reid_core.diagnostics import diagnose
from reid_core.schema import GUARD_FIRINGS, LR_RAISES, STEP_METRICS

GUARD = "head_guard"  # an Event's kind: the guard lowered the head LR
RAISE = "head_lr_raise"  # an Event's kind: the progressive schedule raised it
COUNTS = {GUARD: GUARD_FIRINGS, RAISE: LR_RAISES}  # kind -> its step metric (a running count)

# The head's weights, buffers and AdamW moments as the trainer copies them ({"modules": [...], "moments": [...]},
# `reid_core.trainer.Trainer.head_state`): kept and handed back here, never read.
HeadState = dict[str, Any]


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


@dataclass(frozen=True)
class Change:
    """A decision for the trainer to apply, in this order: put the head back (``restore``, then ``ce_ema``
    is that head's), then multiply the head groups' ``base_lr`` by ``factor``."""

    event: Event  # what changed and why: already in `HeadLRChanges.events`
    factor: float  # the head LR's multiplier (head_guard_factor, or the raise up to its cap)
    restore: Optional[HeadState] = None  # guard: the head at the run's lowest ce_ema so far; None: keep the head
    ce_ema: Optional[float] = None  # guard: that head's ce_ema, the run's (and the step's reported) ce_ema from here

    @property
    def kind(self) -> str:
        return self.event.kind


def runaway(ce_ema: float, previous_ce_ema: Optional[float], chance_ce: float, ce_ratio: float) -> bool:
    """The guard's test: ``ce_ema`` far above chance (``ce_ratio x log C``) and rising."""
    if previous_ce_ema is None or not math.isfinite(ce_ema):  # NaN/inf: the run has diverged; not the guard's
        return False
    return ce_ema > ce_ratio * chance_ce and ce_ema > previous_ce_ema


class HeadLRChanges:
    """The guard and the raise of one run: `judge` after each optimizer step returns the `Change` to apply,
    or None. Every Change returned is made: the trainer applies each one (its scale is already counted)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.scale = 1.0  # the head LR now / the configured head LR: what the run's own changes multiplied it by
        self.events: list[Event] = []
        self._best: Optional[dict[str, Any]] = None  # guard: the head at the lowest ce_ema so far (+ ce_ema, step)
        self._watched: list[dict[str, Any]] = []  # raise: the first row, then the rows since the last decision

    @property
    def guard(self) -> bool:
        """Whether `judge` needs the head as it was before each step (the guard's candidate best head)."""
        return self.cfg.head_guard

    def count(self, kind: str) -> int:
        return sum(e.kind == kind for e in self.events)

    def counts(self) -> dict[str, int]:
        """The step metrics ``head_guard_firings`` and ``head_lr_raises``: the changes so far."""
        return {name: self.count(kind) for kind, name in COUNTS.items()}

    def judge(
        self,
        metrics: dict[str, Any],
        previous_ce_ema: Optional[float],
        configured_lr: float,
        head_before: Optional[HeadState] = None,
    ) -> Optional[Change]:
        """Judge one optimizer step: the Change to apply now, or None.

        ``metrics``: the step's, as `Trainer.train_step` reports them (read, not changed); ``previous_ce_ema``:
        the run's ce_ema before the step; ``configured_lr``: the head LR the config gives for the next step
        (``head_lr`` or its schedule's value), which the run's changes multiply; ``head_before``: with the guard
        on, the head as it was before this step (the head this step's CE was measured on)."""
        cfg, ce_ema, step = self.cfg, metrics["ce_ema"], metrics["step"]
        if cfg.head_guard and head_before is None:
            raise ValueError("The value of `head_before` is None, but must be the head's state when `head_guard` is on.")
        if cfg.head_guard:
            if math.isfinite(ce_ema) and (self._best is None or ce_ema < self._best["ce_ema"]):
                self._best = {**head_before, "ce_ema": ce_ema, "step": step}
            if runaway(ce_ema, previous_ce_ema, metrics["chance_ce"], cfg.head_guard_ce_ratio):
                return self._fire(metrics, previous_ce_ema, configured_lr)
        if cfg.head_lr_raise > 1 and not self.count(GUARD):
            return self._watch(metrics, configured_lr)
        return None

    def _fire(self, metrics: dict[str, Any], previous_ce_ema: float, configured_lr: float) -> Change:
        cfg, best = self.cfg, self._best
        evidence = (
            f"ce_ema {metrics['ce_ema']:.4g} > {cfg.head_guard_ce_ratio:g} x chance {metrics['chance_ce']:.3g} and rising "
            f"(from {previous_ce_ema:.4g}); ce {metrics['ce']:.4g}; logit std {metrics['logit_std']:.3g} and "
            f"head weight norm {metrics['head_weight_norm']:.3g} at step {metrics.get('head_measured_step', metrics['step'])}"
        )  # the monitor measures those every monitor_every steps
        if best is None:
            return self._change(GUARD, metrics["step"], cfg.head_guard_factor, evidence, configured_lr)
        # the run's CE is now that head's: the rule and ASHA read the restored ce_ema
        evidence += f"; head restored to step {best['step']} (ce_ema {best['ce_ema']:.4g})"
        return self._change(GUARD, metrics["step"], cfg.head_guard_factor, evidence, configured_lr, best, best["ce_ema"])

    def _watch(self, metrics: dict[str, Any], configured_lr: float) -> Optional[Change]:
        cfg = self.cfg
        self._watched.append({k: metrics[k] for k in STEP_METRICS if k in metrics})
        if metrics["step"] % cfg.head_lr_watch_steps:
            return None
        rows, self._watched = self._watched, self._watched[:1]  # keep the first row: the diagnosis's start
        head_lr = configured_lr * self.scale
        cap = math.inf if cfg.head_lr_raise_cap is None else cfg.head_lr_raise_cap
        # Learning already (below the run's own Go line), or at the cap: nothing to decide.
        if metrics["ce_ema"] <= go_line(metrics["chance_ce"], cfg.chance_margin) or head_lr >= cap:
            return None
        found = diagnose(
            rows, head_lr=head_lr, backbone_lr=cfg.backbone_lr, label_smoothing=cfg.label_smoothing, margin=cfg.chance_margin
        )
        if found is None or found.cause != "lr_too_low":
            return None
        factor = min(cfg.head_lr_raise, cap / head_lr)
        return self._change(RAISE, metrics["step"], factor, f"{found.cause}: {found.evidence}", configured_lr)

    def _change(
        self,
        kind: str,
        step: int,
        factor: float,
        evidence: str,
        configured_lr: float,
        restore: Optional[HeadState] = None,
        ce_ema: Optional[float] = None,
    ) -> Change:
        before = configured_lr * self.scale
        self.scale *= factor
        event = Event(kind, step, before, configured_lr * self.scale, evidence)
        self.events.append(event)
        return Change(event, factor, restore, ce_ema)

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
        """Continue from `state_dict` (the trainer sets the head groups' ``base_lr`` from ``scale``)."""
        if "head_lr_scale" not in state:  # a checkpoint from before the guard: no changes made
            return
        self.scale = state["head_lr_scale"]
        self.events = [Event(**e) for e in state["head_lr_events"]]
        self._best, self._watched = state["head_guard_best"], list(state["head_lr_watched"])
