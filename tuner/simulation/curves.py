"""Learning curves to replay without training: a parametric family, and the curves an experiment recorded.

A `Curve` is what one trial would report, step by step: images seen, ``ce`` and
``ce_ema`` (smoothed as the trainer smooths it), and the seconds each step takes.
`tuner.simulation.engine` replays curves through the search's real scheduler,
chance-level rule and searcher on a simulated clock; `tuner.simulation.trainable`
reports them to a real Ray search without training.

`Family` is a family of shapes, not a measurement. Its one calibration is the
head LR's effect measured on the pretrained tiny backbone here (DESIGN.md): head
LR 1e-2 gives ce_ema ~3 at step 50, 1e-3 ~5.5, 1.5e-4 is a slow learner just
above the Go line at step 300, 1e-5 and below stay at chance. A sampled config's
``head_lr``, ``grad_accum_steps`` and CE-only phase (``ce_only_steps``, formerly
``warmup_steps``) set the shape; a per-trial seed adds noise, the late starters
and the divergences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from reid_core.errors import UserError
from reid_core.schema import HEAD_LR_COUNTS, STEP_METRICS

# what the early verdict reads of a recorded row beside samples and CE (reid_core.early): the step and the head's metrics
HEAD_KEYS = tuple(k for k in STEP_METRICS if k not in ("samples", "ce", "ce_ema", "chance_ce")) + HEAD_LR_COUNTS

if TYPE_CHECKING:
    from tuner.settings import SearchSettings

HEALTHY, SLOW, LATE, STUCK, DIVERGING, RECORDED = "healthy", "slow", "late", "stuck", "diverging", "recorded"
KINDS = (HEALTHY, SLOW, LATE, STUCK, DIVERGING)


@dataclass
class Curve:
    config: dict[str, Any]  # the trial's sampled values
    samples: Sequence[int]  # images seen after each step
    ce: list[float]
    ce_ema: list[float]
    seconds: list[float]  # seconds since the trial started, after each step (the simulated clock)
    chance_ce: float
    kind: str
    final: Optional[float]  # ce_ema at the budget; None where unknown (a recorded trial stopped early)
    trial_id: Optional[str] = None  # a recorded trial's id
    end: Optional[str] = None  # a recorded trial's end reason in the live search
    started: float = 0.0  # a recorded trial's wall-clock start (Unix seconds)
    head: Optional[list[dict[str, float]]] = None  # a recorded trial's step and head metrics per row: the early verdict reads them


@dataclass(frozen=True)
class Family:
    num_classes: int = 400
    batch_size: int = 32  # images per micro-batch
    floor: float = 0.1  # the CE a healthy head approaches
    rate: float = 0.0446  # CE fall per image per unit of head LR (1e-2: ce_ema ~3 at step 50, as measured)
    go_steps: int = 300  # a curve crossing the Go line later than this (at accumulation 1) is labelled slow
    margin: float = 0.39  # Go line = log(C) - margin, for the labels only
    diverge_from: float = 3e-2  # head LR from which a curve may diverge ...
    diverge_to: float = 1e-1  # ... certainly at this one
    late_share: float = 0.15  # curves flat at chance through their CE-only phase and up to late_steps more
    late_steps: int = 150
    noise: float = 0.05  # sd of each step's CE around the curve
    beta: float = 0.95  # ce_ema smoothing per micro-batch (TrainConfig.ce_ema_beta)
    micro_batch_s: float = 0.05  # seconds per micro-batch (forward and backward)
    optimizer_s: float = 0.02  # seconds per optimizer step: accumulation spreads it over more images

    @property
    def chance_ce(self) -> float:
        return math.log(self.num_classes)

    def curve(self, config: dict[str, Any], max_steps: int, seed: Sequence[int]) -> Curve:
        """The curve of ``config`` trained for ``max_steps`` steps at accumulation 1 (``max_steps / k`` steps of
        k micro-batches); ``seed`` (non-negative integers) draws its noise, late start and divergence."""
        rng = np.random.default_rng(list(seed))
        lr = float(config.get("head_lr", 1e-3))
        k = int(config.get("grad_accum_steps", 1))
        ce_only = int(config.get("ce_only_steps", config.get("warmup_steps", 0)))
        steps = max(1, math.ceil(max_steps / k))
        per_step = self.batch_size * k
        chance, go_line = self.chance_ce, self.chance_ce - self.margin
        # AdamW moves each weight by about the LR per step, whatever the batch: per image, accumulation is slower.
        fall = self.rate * lr / k
        late = rng.random() < self.late_share
        delay = (ce_only * k + rng.integers(self.late_steps + 1)) * self.batch_size if late else 0
        p_diverge = math.log(lr / self.diverge_from) / math.log(self.diverge_to / self.diverge_from) if lr > self.diverge_from else 0.0
        diverge_at = rng.uniform(0.1, 0.6) * steps * per_step if rng.random() < p_diverge else math.inf
        samples = np.arange(1, steps + 1) * per_step
        x = chance - (chance - self.floor) * -np.expm1(-fall * np.maximum(0.0, samples - delay))
        if math.isfinite(diverge_at):  # x e every 20 steps past the onset: infinite within a few hundred steps
            with np.errstate(over="ignore"):
                x = x * np.exp(np.maximum(0.0, samples - diverge_at) / (20 * per_step))
            x[x >= 1e6] = np.inf
        x = np.maximum(0.0, x + rng.normal(0.0, self.noise, steps))
        bad = np.flatnonzero(~np.isfinite(x))
        n = steps if bad.size == 0 else int(bad[0]) + 1  # the training job stops at a non-finite loss
        x = x[:n]
        x[~np.isfinite(x)] = np.nan
        ema = _ema(x, self.beta**k)
        step_s = k * self.micro_batch_s + self.optimizer_s
        final = float(ema[-1]) if n == steps else math.inf
        if math.isfinite(diverge_at):
            kind = DIVERGING
        elif final > go_line:
            kind = STUCK
        elif late:
            kind = LATE
        else:
            crossed = samples[int(np.argmax(ema <= go_line))]
            kind = SLOW if crossed > self.go_steps * self.batch_size else HEALTHY
        seconds = (np.arange(1, n + 1) * step_s).tolist()
        # samples as a range: indexed like a list, built for free
        return Curve(dict(config), range(per_step, per_step * (n + 1), per_step), x.tolist(), ema.tolist(), seconds, chance, kind, final)


def _ema(x: np.ndarray, beta: float, chunk: int = 256) -> np.ndarray:
    """``y[0] = x[0]``, ``y[t] = beta * y[t-1] + (1 - beta) * x[t]`` (the trainer's ce_ema), vectorised per chunk:
    ``y[lo+i] = beta**(i+1) * (y[lo-1] + (1 - beta) * sum_j<=i x[lo+j] / beta**(j+1))``; terms are >= 0, so the
    sum loses no precision, and a chunk of 256 keeps ``beta**-256`` finite down to beta = 0.07."""
    out = np.empty_like(x)
    previous = x[0]
    for lo in range(0, len(x), chunk):
        part = x[lo : lo + chunk]
        powers = beta ** np.arange(1, len(part) + 1)
        out[lo : lo + len(part)] = powers * (previous + (1 - beta) * np.cumsum(part / powers))
        previous = out[lo + len(part) - 1]
    return out


def recorded_curves(exp_dir: str | Path) -> tuple["SearchSettings", list[Curve]]:
    """``(the search's settings, curves)`` of an experiment folder: each trial's ``result.json`` rows, in the
    order the trials started, with each row's measured time; a trial's final is known only if it reached the
    budget."""
    from tuner.experiment import Experiment
    from tuner.results import read_experiment

    settings, trials, frame = read_experiment(Experiment.open(exp_dir, "--from"))
    ends = dict(zip(frame["trial_id"], frame["end_reason"])) if not frame.empty else {}
    curves = []
    for trial in trials:
        rows = [r for r in trial.rows if "samples" in r and "ce_ema" in r]
        if not rows:
            continue
        sampled = trial.sampled  # under today's names (Experiment.trials)
        curves.append(
            Curve(
                config={k: sampled.get(k) for k in settings.space},
                samples=[r["samples"] for r in rows],
                ce=[r["ce"] for r in rows],
                ce_ema=[r["ce_ema"] for r in rows],
                seconds=[r.get("time_total_s", i + 1.0) for i, r in enumerate(rows)],
                chance_ce=rows[-1]["chance_ce"],
                kind=RECORDED,
                final=rows[-1]["ce_ema"] if rows[-1]["samples"] >= settings.max_samples else None,
                trial_id=trial.trial_id,
                end=ends.get(trial.trial_id),
                started=rows[0]["timestamp"] - rows[0].get("time_total_s", 0.0),
                head=[{k: r[k] for k in HEAD_KEYS if k in r} for r in rows] if "head_grad_norm" in rows[0] else None,
            )
        )
    if not curves:
        raise UserError(f"'{exp_dir}' holds no trial with recorded steps; pass an experiment that ran")
    curves.sort(key=lambda c: c.started)  # stable: trials started in the same second keep Ray's order
    return settings, curves

