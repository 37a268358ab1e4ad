"""Planted-fault benchmark of the diagnosis: is a stuck run stopped, and is its cause named right?

    python benchmarks/diagnosis.py [--seeds 1 2] [--kinds NAME ...] [--steps 120] [--grace-steps 60]

Each fault kind is planted two ways on a real `Trainer` after it is built (as the bug happens in
user code), on each config of `CONFIGS` and each seed; healthy runs (fast, and slow learners near
the learnable edge) run beside them. Every run is judged as the search judges a trial: the
chance-level rule (`reid_core.chance`) over its steps, with the grace window in images; at its
verdict `stuck_at_chance` the run stops and `reid_core.diagnostics.diagnose` names the cause
from the rows so far (and the configured head LR). A run the rule never stops trains to ``--steps``.

A kind our vocabulary has no cause for expects ``unknown``: naming any cause there is wrong.
An honest ``unknown`` on a kind that has a cause is not wrong, and is counted apart.

Calibration set (do not report on it): seeds 0-2 (0 set the thresholds; 1-2 were printed beside it
while ``OVERSHOOT`` was set), and the plants the thresholds were set on (head LR sweep, tanh logits,
unscaled cosine classifier, randperm-shuffled labels). The default seeds, 3 and 4, are the reported set. Prints a confusion table, then, last, the rates line.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from reid_core.chance import DEFAULT_CHANCE_MARGIN, ChanceLevelRule
from reid_core.config import TrainConfig
from reid_core.diagnostics import CAUSES, UNKNOWN, diagnose
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser
from reid_core.schema import STUCK
from reid_core.trainer import Trainer

HEALTHY = "healthy"
NOT_STOPPED = "not_stopped"
Plant = Optional[Callable[[Trainer], None]]


# --- plants: each edits a built Trainer the way the bug happens in user code ---------------------


def _logits(fn: Callable) -> Plant:
    def plant(t: Trainer) -> None:
        inner = t.model.identity_logits
        t.model.identity_logits = lambda f: fn(inner(f))

    return plant


def _labels(fn: Callable) -> Plant:
    def plant(t: Trainer) -> None:
        inner, gen = t.stream, torch.Generator().manual_seed(1)
        t.stream = ((images, fn(labels, gen), tokens) for images, labels, tokens in inner)

    return plant


def _drop_head(t: Trainer) -> None:  # the optimizer was built from the backbone's parameters only
    head = {id(p) for p in t.model.classifier.parameters()}
    groups = [dict(g, params=[p for p in g["params"] if id(p) not in head]) for g in t.optimizer.param_groups]
    t.optimizer = torch.optim.AdamW([g for g in groups if g["params"]])


def _stale_head(t: Trainer) -> None:  # the optimizer holds a copy of the head (built before it was replaced)
    weight = t.model.classifier.weight
    for group in t.optimizer.param_groups:
        group["params"] = [torch.nn.Parameter(p.detach().clone()) if p is weight else p for p in group["params"]]
    t.optimizer = torch.optim.AdamW(t.optimizer.param_groups)


def _frozen_head(t: Trainer) -> None:
    t.model.classifier.weight.requires_grad_(False)


def _detached_weight(t: Trainer) -> None:  # logits from weight.detach(): the head gets no gradient
    m = t.model
    m.identity_logits = lambda f: F.linear(m.bnneck(f), m.classifier.weight.detach())


def _cosine(t: Trainer) -> None:
    m = t.model
    m.identity_logits = lambda f: F.linear(F.normalize(f, dim=-1), F.normalize(m.classifier.weight, dim=-1))


def _grad_hook(value: float) -> Plant:
    def plant(t: Trainer) -> None:
        t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        t.model.classifier.weight.register_hook(lambda g: g * value)

    return plant


def _head_lr_zeroed_after(step: int) -> Plant:  # a scheduler that zeroes the head's LR after warm-up
    def plant(t: Trainer) -> None:
        inner = t.train_step

        def train_step():
            if t.step >= step:  # the Trainer applies base_lr x the schedule's factor each step
                for group in t.optimizer.param_groups:
                    if any(p is t.model.classifier.weight for p in group["params"]):
                        group["base_lr"] = 0.0
            return inner()

        t.train_step = train_step

    return plant


def _collapse_features(t: Trainer) -> None:  # every image gets the batch's mean feature (a collapsed backbone)
    inner = t.model.identity_logits
    t.model.identity_logits = lambda f: inner(f.mean(0, keepdim=True).expand_as(f) + 1e-3 * torch.randn_like(f))


def _bnneck_eval_after(step: int) -> Plant:  # the BNNeck switched to eval mode (running statistics) from `step` on
    def plant(t: Trainer) -> None:
        inner = t.train_step

        def train_step():
            if t.step >= step:
                t.model.bnneck.eval()  # the Trainer never calls model.train() again: it stays so
            return inner()

        t.train_step = train_step

    return plant


@dataclass(frozen=True)
class Kind:
    expected: str  # the cause it should be named; UNKNOWN where we have none; HEALTHY for healthy runs
    ways: tuple[tuple[str, dict, Plant], ...]  # (name, config overrides, plant)


RAND = {"pretrained": None}
KINDS: dict[str, Kind] = {
    "lr_too_low": Kind("lr_too_low", (("head_lr=1e-5", {"head_lr": 1e-5}, None), ("head_lr=3e-6", {"head_lr": 3e-6}, None))),
    "head_not_in_optimizer": Kind("head_not_in_optimizer", (("dropped", {}, _drop_head), ("stale copy", {}, _stale_head))),
    "no_gradient": Kind("no_gradient", (("frozen", {}, _frozen_head), ("weight.detach()", {}, _detached_weight))),
    "bounded_logits": Kind(
        "bounded_logits", (("cosine", RAND, _cosine), ("clamp(-1,1)", RAND, _logits(lambda x: x.clamp(-1, 1))))
    ),
    "labels_no_signal": Kind(
        "labels_no_signal",
        (
            ("randperm", {}, _labels(lambda y, g: y[torch.randperm(len(y), generator=g)])),
            ("rolled", {}, _labels(lambda y, g: y.roll(1))),
        ),
    ),
    "amp_skipped_steps": Kind("amp_skipped_steps", (("inf grads", {}, _grad_hook(float("inf"))), ("nan grads", {}, _grad_hook(float("nan"))))),
    "head_lr_zeroed": Kind("lr_too_low", (("after step 3", {}, _head_lr_zeroed_after(3)), ("after step 5", {}, _head_lr_zeroed_after(5)))),
    "features_collapsed": Kind(UNKNOWN, (("batch mean", {}, _collapse_features), ("batch mean, random init", RAND, _collapse_features))),
    "bnneck_eval": Kind(UNKNOWN, (("eval from step 0", RAND, _bnneck_eval_after(0)), ("eval from step 5", RAND, _bnneck_eval_after(5)))),
    "logit_scale_tiny": Kind(UNKNOWN, (("x0.01", {}, _logits(lambda x: 0.01 * x)), ("x0.005", {}, _logits(lambda x: 0.005 * x)))),
    "label_smoothing_near_1": Kind(UNKNOWN, (("0.99", {"label_smoothing": 0.99}, None), ("0.95", {"label_smoothing": 0.95}, None))),
    HEALTHY: Kind(
        HEALTHY,
        (("head_lr=1e-2", {"head_lr": 1e-2}, None), ("head_lr=2e-3", {"head_lr": 2e-3}, None), ("slow 5e-4", {"head_lr": 5e-4}, None)),
    ),
}
CONFIGS = {  # batch size and accumulation; CE only for the whole run (the identity head is the question)
    "b32": {"batch_size": 32, "grad_accum_steps": 1},
    "b16x2": {"batch_size": 16, "grad_accum_steps": 2},
}


def judge(overrides: dict, plant: Plant, steps: int, grace_steps: int, run_on: bool = False) -> tuple[str, Optional[int], Optional[int]]:
    """``(named, step, go_step)``: the cause named at the rule's stuck verdict and its step, or NOT_STOPPED;
    with ``run_on`` (healthy runs) training goes on past a verdict, and ``go_step`` is the first step whose
    ce_ema is below the Go line (None: never, in ``steps``): a stopped run that crosses later was a learner."""
    cfg = TrainConfig(max_steps=steps, ce_only_steps=10 * steps, threads=1, **overrides)
    trainer = Trainer(cfg)
    if plant is not None:
        plant(trainer)
    rule = ChanceLevelRule(grace_steps * cfg.batch_size, DEFAULT_CHANCE_MARGIN)
    rows: list[dict] = []
    named, at, go = NOT_STOPPED, None, None
    for _ in range(steps):
        rows.append(trainer.train_step())
        row = rows[-1]
        if go is None and row["ce_ema"] <= row["chance_ce"] - DEFAULT_CHANCE_MARGIN:
            go = row["step"]
        if at is None and rule(row) == STUCK:
            found = diagnose(rows, head_lr=cfg.head_lr, backbone_lr=cfg.backbone_lr)
            named, at = (found.cause if found else UNKNOWN), row["step"]
            if not run_on:
                break
    return named, at, go


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(prog="python benchmarks/diagnosis.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4], help="reported seeds (0-2 were seen while calibrating)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), help=f"fault kinds (default all: {', '.join(KINDS)})")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help=f"configs (default all: {', '.join(CONFIGS)})")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps of a run the rule does not stop")
    p.add_argument("--grace-steps", type=int, default=60, help="the rule's grace window, steps at accumulation 1")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    args = p.parse_args(argv)
    try:
        for name, known in (("kind", KINDS), ("config", CONFIGS)):
            bad = [k for k in getattr(args, f"{name}s") if k not in known]
            if bad:
                raise UserError(f"unknown {name} '{bad[0]}'; known: {', '.join(known)}")
        if not 0 < args.grace_steps < args.steps:
            raise UserError(f"--grace-steps is {args.grace_steps}, but must be > 0 and below --steps {args.steps}")
        default, chosen = TrainConfig().to_dict(), TrainConfig().with_overrides(args.set).to_dict()
    except UserError as err:
        return cli_exit(err, p.prog)
    base = {k: v for k, v in chosen.items() if v != default[k]}  # what --set changed, applied to every run

    started = time.perf_counter()
    outcomes: list[tuple[str, str, Optional[int]]] = []  # (kind, named, step)
    learners_stopped = 0  # healthy runs stopped that crossed the Go line later (trained on past the verdict)
    for kind in args.kinds:
        for way, overrides, plant in KINDS[kind].ways:
            for config in args.configs:
                for seed in args.seeds:
                    run_on = KINDS[kind].expected == HEALTHY
                    named, step, go = judge(
                        {**CONFIGS[config], **overrides, **base, "seed": seed}, plant, args.steps, args.grace_steps, run_on
                    )
                    outcomes.append((kind, named, step))
                    if run_on and step is not None:
                        learners_stopped += go is not None
                    line = f"{kind:24s} {way:16s} {config:6s} seed {seed}: {named}" + (f" at step {step}" if step else "")
                    print(line + (f"; Go line at step {go}" if run_on else ""), flush=True)
    wall = time.perf_counter() - started

    columns = [*CAUSES, UNKNOWN, NOT_STOPPED]
    counts = Counter((k, n) for k, n, _ in outcomes)
    print("\nconfusion (rows: planted kind -> expected; columns: named)")
    print(f"{'kind':24s} {'expected':22s} " + " ".join(f"{c[:10]:>10s}" for c in columns))
    for kind in args.kinds:
        print(f"{kind:24s} {KINDS[kind].expected:22s} " + " ".join(f"{counts[(kind, c)]:>10d}" for c in columns))

    faults = [(k, n, s) for k, n, s in outcomes if KINDS[k].expected != HEALTHY]
    healthy = [(k, n, s) for k, n, s in outcomes if KINDS[k].expected == HEALTHY]
    right = sum(n == KINDS[k].expected for k, n, _ in faults)
    wrong = sum(n not in (KINDS[k].expected, UNKNOWN, NOT_STOPPED) for k, n, _ in faults)
    unknown = sum(n == UNKNOWN and KINDS[k].expected != UNKNOWN for k, n, _ in faults)
    missed = sum(n == NOT_STOPPED for _, n, _ in faults)
    bad_healthy = sum(n != NOT_STOPPED for _, n, _ in healthy)
    steps = [s for _, _, s in faults if s is not None]
    n = max(len(faults), 1)
    print(f"\n{len(faults)} fault runs ({len(args.kinds) - (HEALTHY in args.kinds)} kinds), {len(healthy)} healthy runs, seeds {args.seeds}")
    print(f"fault runs not stopped: {missed}")
    print(f"healthy runs stopped that crossed the Go line later within --steps: {learners_stopped}")
    print(f"wall time: {wall:.0f} s")
    print(
        f"top-1 {right / n:.3f}, wrong-cause {wrong / n:.3f}, unknown {unknown / n:.3f}, "
        f"healthy stopped or named {bad_healthy} of {len(healthy)}, "
        f"median detection step {statistics.median(steps) if steps else float('nan'):.0f}, wall {wall:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
