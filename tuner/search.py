"""The search: Optuna proposes, ASHA ranks, the chance-level rule kills trials stuck at log(C).

    python -m tuner.search                                  # the embedded default, minutes on a laptop CPU
    python -m tuner.search --space head_lr --num-samples 20 --max-steps 600
    python -m tuner.search --address ray://head:10001 --gpus-per-trial 0.5 --set data=/data/CUHK-PEDES
    python -m tuner.search --trainable my_repo.tune:train --config defaults.yaml --space space.yaml  # your own loop

Everything a user can get wrong (space, config, budgets, paths) is checked
before Ray starts, with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from reid_core.chance import DEFAULT_CHANCE_MARGIN, DEFAULT_GRACE_STEPS
from reid_core.dashboards import add_mlflow_argument, add_wandb_argument, check_wandb, require_mlflow
from reid_core.config import TrainConfig, canonical_key, coerce_value
from reid_core.errors import INTERRUPTED, UserError, cli_exit
from reid_core.flags import ArgumentParser, add_config_arguments, add_shortcut_arguments, parse_args, shortcut_values
from reid_core.schema import EVAL_METRICS
from reid_core.train import load_cli_config
from search_spaces import load_space
from tuner.cluster import check_reachable, use_token
from tuner.driver import Loggers, Resources, run
from tuner.lineage import check_pbt_flags, perturbed_fields
from tuner.settings import PBT, SCHEDULERS, SEARCHERS, SETTINGS_FILE, SearchSettings, settings_from_flags
from tuner.storage import Location, check_writable, location

PROG = "python -m tuner.search"
DEFAULT_PERTURBATION_INTERVAL = 50  # steps at accumulation 1: two or three PBT rounds between the grace window and the budget
DEFAULT_CHECKPOINT_EVERY = 50  # steps; a checkpoint of the tiny model with its AdamW moments is ~40 MB


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_config_arguments(p)
    g = p.add_argument_group("what to search")
    g.add_argument("--space", default="default", help="shipped space name or a YAML file (default: default)")
    add_shortcut_arguments(g)  # --data, --data-format, --model, --pretrained
    g.add_argument("--points-to-evaluate", metavar="FILE", help="JSON/YAML list of configs Optuna tries first")
    g.add_argument(
        "--searcher",
        choices=SEARCHERS,
        help="who proposes the trials' configs: optuna (TPE, the default) or random; --scheduler pbt is always random",
    )
    g.add_argument(
        "--trainable",
        metavar="PACKAGE.MODULE:FUNCTION",
        help="tune your own training function fn(config, report) instead (reid_core.contract); --config is then "
        "your own config and --space names its keys",
    )
    b = p.add_argument_group("budget and stopping")
    b.add_argument("--num-trials", type=int, default=8, help="trials (default 8)")
    b.add_argument("--num-samples", dest="num_trials", type=int, help=argparse.SUPPRESS)  # Ray's word; before 0.2
    b.add_argument(
        "--max-steps",
        type=int,
        default=450,
        help="optimizer steps per trial at grad_accum_steps=1; a trial with accumulation k runs max_steps/k "
        "steps, so all trials see the same images (default 450)",
    )
    b.add_argument(
        "--grace-steps",
        type=int,
        default=DEFAULT_GRACE_STEPS,
        help=f"grace window in steps at accumulation 1, i.e. grace-steps x batch_size images (default {DEFAULT_GRACE_STEPS})",
    )
    b.add_argument(
        "--chance-margin",
        type=float,
        default=DEFAULT_CHANCE_MARGIN,
        help=f"Go line = log(C) - margin (default {DEFAULT_CHANCE_MARGIN}: 5.6 for 400 ids)",
    )
    b.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor (default 2)")
    b.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default="asha",
        help="asha (default): ASHA cuts the worse trials at rungs. pbt: Ray Tune's PopulationBasedTraining; Ray 2.60's "
        "PBT refuses a search algorithm, so trials start from configs drawn at random from the space (--seed; no "
        "Optuna), then after the grace window, every --perturbation-interval, the bottom quarter continues from a "
        "copy of a top trial's checkpoint with head_lr/backbone_lr x2, x0.5 or redrawn; the winner exports as a "
        "head_lr_schedule",
    )
    b.add_argument(
        "--perturbation-interval",
        type=int,
        default=DEFAULT_PERTURBATION_INTERVAL,
        metavar="STEPS",
        help=f"pbt: steps at accumulation 1 between two looks at a trial (default {DEFAULT_PERTURBATION_INTERVAL})",
    )
    b.add_argument(
        "--metric",
        default="ce_ema",
        help=f"what Optuna and ASHA optimise: ce_ema (default) or a retrieval metric ({', '.join(EVAL_METRICS)}), "
        "which is then evaluated at every ASHA rung",
    )
    b.add_argument("--mode", choices=("min", "max"), help="minimise or maximise --metric (default: max for val_*, else min)")
    b.add_argument("--seed", type=int, default=0, help="seeds Optuna's sampler, or the random draws and PBT (trial seeds come from the config)")
    r = p.add_argument_group("resources and cluster")
    r.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    r.add_argument("--gpus-per-trial", type=float, default=None, help="GPUs per trial, fractions allowed (default 1 when CUDA is present, else 0)")
    r.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what resources allow)")
    r.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial, from its last checkpoint (default 0)")
    r.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help=f"steps between trial checkpoints (default {DEFAULT_CHECKPOINT_EVERY} with --max-failures, else none)",
    )
    r.add_argument("--address", help="connect to an existing Ray cluster (e.g. ray://head:10001 or auto)")
    r.add_argument("--auth-token-file", metavar="FILE", help="token file for a cluster with RAY_AUTH_MODE=token")
    o = p.add_argument_group("where results go")
    o.add_argument("--storage-path", default="tune_results", help="experiments folder (default ./tune_results)")
    o.add_argument("--name", help="experiment name (default search-TIMESTAMP)")
    o.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name")
    o.add_argument("--quiet", action="store_true", help="only the final summary")
    add_mlflow_argument(o, "log every trial's per-step metrics to MLflow, one run per trial")
    add_wandb_argument(o, "every trial's per-step metrics, one run per trial grouped by --name (its files in the experiment folder)")
    o.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files per trial (off by default: every result costs the driver time)",
    )
    o.add_argument("--inject-fault", metavar="STEP:KEY=VALUE", help=argparse.SUPPRESS)  # reliability tests only
    o.add_argument("--skip-preflight", action="store_true", help="skip the pre-flight checks (data, wiring, overfit)")
    return p


SEARCH_METRICS = ("ce_ema", "ce", "loss", *EVAL_METRICS)  # what a trial reports that is worth optimising


def _check_metric(args) -> None:
    """``--metric`` must be reported by every trial; ``--mode`` follows it (higher R@K is better, lower CE)."""
    if args.metric not in SEARCH_METRICS:
        raise UserError(f"--metric {args.metric} is not one trials report; use one of {', '.join(SEARCH_METRICS)}")
    better = "max" if args.metric in EVAL_METRICS else "min"
    if args.mode is None:
        args.mode = better
    elif args.mode != better:
        word = "higher" if better == "max" else "lower"
        raise UserError(f"--metric {args.metric} is better when {word}: use --mode {better} (or leave --mode out)")


def _loggers(args) -> Loggers:
    return Loggers(
        tensorboard=args.tensorboard,
        mlflow=args.mlflow,
        wandb=args.wandb,
        wandb_mode=check_wandb(args.wandb) if args.wandb else "offline",
    )


def _check_args(args) -> None:
    _check_metric(args)
    if args.mlflow:
        require_mlflow()
    if args.wandb:
        check_wandb(args.wandb)

    def positive(flag: str, value: Optional[float], allow_zero: bool = False) -> None:
        if value is None:
            return
        if not (value > 0 or (allow_zero and value == 0)) or not math.isfinite(value):
            rule = ">= 0" if allow_zero else "> 0"
            raise UserError(f"{flag} is {value}, but must be {rule}")

    positive("--num-trials", args.num_trials)
    positive("--max-steps", args.max_steps)
    positive("--grace-steps", args.grace_steps)
    positive("--chance-margin", args.chance_margin)
    positive("--cpus-per-trial", args.cpus_per_trial)
    positive("--gpus-per-trial", args.gpus_per_trial, allow_zero=True)
    positive("--max-concurrent", args.max_concurrent)
    positive("--max-failures", args.max_failures, allow_zero=True)
    positive("--checkpoint-every", args.checkpoint_every)
    positive("--perturbation-interval", args.perturbation_interval)
    if args.scheduler == PBT:
        check_pbt_flags(args)
    if args.reduction_factor <= 1:
        raise UserError(f"--reduction-factor is {args.reduction_factor}, but must be > 1")
    if args.grace_steps > args.max_steps:
        raise UserError(
            f"--grace-steps {args.grace_steps} exceeds --max-steps {args.max_steps}: the chance-level rule would "
            "never fire; lower --grace-steps or raise --max-steps"
        )
    if args.auth_token_file and not Path(args.auth_token_file).is_file():
        raise UserError(f"--auth-token-file '{args.auth_token_file}' does not exist; pass the cluster's token file")
    if args.address:
        check_reachable(args.address)
        use_token(args.auth_token_file)  # before anything imports ray: Ray reads RAY_AUTH_MODE once, at import


def _base_config(args) -> TrainConfig:
    overrides = list(args.overrides)
    overrides.append(f"max_steps={args.max_steps}")
    if not any(o.startswith("threads=") for o in overrides):
        overrides.append(f"threads={max(1, int(args.cpus_per_trial))}")  # one torch thread per CPU the trial holds
    base = TrainConfig.from_dict(shortcut_values(args), base=load_cli_config(args.config, overrides))
    # Ray runs each trial in its own working folder: a relative data or weights path must not depend on it.
    absolute = {}
    if base.data != "synthetic" and Path(base.data).expanduser().exists():
        absolute["data"] = str(Path(base.data).expanduser().resolve())
    if base.pretrained is not None and Path(base.pretrained).expanduser().is_file():
        absolute["pretrained"] = str(Path(base.pretrained).expanduser().resolve())
    return TrainConfig.from_dict(absolute, base=base)


def read_points_file(path: str) -> list[dict[str, Any]]:
    """The ``--points-to-evaluate`` file: a JSON/YAML list of mappings (keys checked by the caller)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--points-to-evaluate file '{path}' does not exist")
    try:
        text = file.read_text()
        points = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise UserError(f"cannot parse --points-to-evaluate '{path}': {str(err).splitlines()[0]}") from None
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise UserError(f"--points-to-evaluate '{path}' must hold a list of {{field: value}} mappings")
    return points


def _read_points(path: Optional[str], space: dict) -> list[dict[str, Any]]:
    if path is None:
        return []
    points = read_points_file(path)
    for point in points:
        for key in point:
            if canonical_key(key) not in space:
                raise UserError(f"--points-to-evaluate names '{key}', which the space does not search ({', '.join(space)})")
    # Typed values (YAML 1.1 reads 1e-6 as a string): Optuna and params.json get numbers.
    return [{canonical_key(k): coerce_value(k, v) for k, v in point.items()} for point in points]


def _experiment_dir(args) -> Location:
    """The experiment's folder under ``--storage-path`` (a folder, or a storage URI every node reaches:
    `tuner.storage`), the storage checked writable before Ray starts."""
    name = args.name or f"search-{datetime.now():%Y%m%d-%H%M%S}"
    storage = location(args.storage_path).expanduser().resolve()
    check_writable(storage)
    exp_dir = storage / name
    if args.resume:
        if not args.name:
            raise UserError("--resume needs --name: the experiment to continue")
        if not (exp_dir / SETTINGS_FILE).is_file():
            raise UserError(f"--resume: '{exp_dir}' holds no reid-tune experiment; check --storage-path and --name")
    elif exp_dir.exists() and any(exp_dir.iterdir()):
        raise UserError(f"experiment '{exp_dir}' already exists; pass --resume to continue it or a new --name")
    return exp_dir


def run_search(args) -> int:
    log = (lambda s: None) if args.quiet else print
    resources = Resources(
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        address=args.address,
        auth_token_file=args.auth_token_file,
    )
    if args.resume:
        # Continue with the settings the experiment was started with, whatever the flags say now.
        exp_dir = _experiment_dir(args)
        settings = SearchSettings.load(exp_dir)
        if settings.trainable:
            from reid_core.contract import load_trainable

            load_trainable(settings.trainable, settings.trainable_root)  # still importable, before Ray starts
        else:
            _check_weights_and_data(settings.base_config, log)
        return run(settings, exp_dir, resources, resume=True, quiet=args.quiet, loggers=_loggers(args))

    # a trial that may be retried checkpoints, so the retry continues instead of starting over
    checkpoint_every = (
        args.checkpoint_every if args.checkpoint_every is not None else (DEFAULT_CHECKPOINT_EVERY if args.max_failures else 0)
    )
    if args.trainable:  # the user's own training function: tuner.byo checks and probes it
        from tuner.byo import user_search

        settings, exp_dir, space, points = user_search(args, _experiment_dir, log, checkpoint_every)
        return run(settings, exp_dir, resources, space=space, points=points, quiet=args.quiet, loggers=_loggers(args))

    fault = _parse_fault(args.inject_fault)  # a bad spec fails before the minutes of checks below
    space = load_space(args.space)
    base = _base_config(args)
    points = _read_points(args.points_to_evaluate, space)
    if "max_steps" in space:
        raise UserError("search space: max_steps is the budget; set it with --max-steps, not in the space")
    if args.scheduler == PBT:
        perturbed_fields(space, args.space)  # none: one line, exit 2
    exp_dir = _experiment_dir(args)
    _check_weights_and_data(base, log)
    if not args.skip_preflight:
        from reid_core.preflight import preflight

        preflight(base, overfit_head_lr=_best_head_lr(space, base), log=None if args.quiet else print)
    settings = settings_from_flags(
        args,
        base=base.to_dict(),
        space={k: d.describe() for k, d in space.items()},
        grace_samples=args.grace_steps * base.batch_size,  # steps at accumulation 1, as the plain job counts them
        max_samples=args.max_steps * base.images_per_step,
        checkpoint_every=checkpoint_every,
        inject_fault=fault,
        perturbation_interval=args.perturbation_interval * base.batch_size if args.scheduler == PBT else 0,
    )
    return run(
        settings, exp_dir, resources, space=space, points=points, quiet=args.quiet, loggers=_loggers(args)
    )


def _parse_fault(spec: Optional[str], coerce=coerce_value) -> Optional[dict[str, Any]]:
    """``STEP:KEY=VALUE`` (testing hook) -> ``{"step", "key", "value"}``; ``coerce(key, value)`` types it."""
    if spec is None:
        return None
    step, _, assignment = spec.partition(":")
    key, _, value = assignment.partition("=")
    if not step.isdigit() or not key or not value:
        raise UserError(f"--inject-fault '{spec}' is not STEP:KEY=VALUE")
    return {"step": int(step), "key": key, "value": coerce(key, yaml.safe_load(value))}


def _check_weights_and_data(base: TrainConfig, log) -> None:
    """In the driver, once: pretrained weights fetched (or, offline, one line naming the fix) and the data
    set read and checked, not in every trial; what the data set changes (no captions: no SDM) said once."""
    from reid_core.data import load_data
    from reid_core.model import context_length
    from reid_core.pretrained import check_model, resolve_pretrained

    check_model(base)
    resolve_pretrained(base)
    data = load_data(base, context_length(base))  # cached in this process: the pre-flight reads it again for free
    for note in data.notes:
        log(note)


def _best_head_lr(space: dict, base: TrainConfig) -> float:
    """The most favourable head LR the search will try: the top of its head_lr domain."""
    domain = space.get("head_lr")
    if domain is None:
        return base.head_lr
    return float(max(domain.args) if domain.kind == "choice" else domain.args[1])


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv, prog)
    try:
        _check_args(args)
        return run_search(args)
    except UserError as err:
        return cli_exit(err, parser.prog)
    except KeyboardInterrupt:  # Ctrl-C before the trials started, or a second one while they stop
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
