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

from reid_core.chance import DEFAULT_CHANCE_MARGIN, DEFAULT_GRACE_STEPS, EARLY, VERDICTS
from reid_core.dashboards import add_mlflow_argument, add_wandb_argument, check_wandb, require_mlflow
from reid_core.errors import INTERRUPTED, UserError, cli_exit
from reid_core.faults import parse_fault
from reid_core.flags import ArgumentParser, add_config_arguments, add_shortcut_arguments, parse_args, shortcut_values
from reid_core.job import Job, job_for
from reid_core.schema import EVAL_METRICS
from search_spaces import Domain, load_space
from tuner.cluster import check_reachable, use_token
from tuner.disk import check as check_disk, search_plan
from tuner.driver import PREFLIGHT_PLACES, Loggers, Resources, run
from tuner.experiment import Experiment
from tuner.lineage import check_pbt_flags, perturbed_fields
from tuner.optuna_storage import check_storage, shown, storage_url
from tuner.settings import PBT, SCHEDULERS, SEARCHERS, SETTINGS_FILE, SearchSettings
from tuner.storage import Location, check_writable, location

PROG = "python -m tuner.search"
DEFAULT_PERTURBATION_INTERVAL = 50  # steps at accumulation 1: two or three PBT rounds between the grace window and the budget
DEFAULT_CHECKPOINT_EVERY = 50  # steps; a checkpoint of the tiny model with its AdamW moments is ~40 MB


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_config_arguments(p)
    g = p.add_argument_group("what to search")
    g.add_argument("--space", help="shipped space name or a YAML file (default: default; needed with --trainable)")
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
        help="the budget: optimizer steps of the base config (its images per step: batch_size x grad_accum_steps, 32 "
        "by default); every trial may see that many images, so a trial with k times the accumulation runs 1/k the "
        "steps (default 450)",
    )
    b.add_argument(
        "--grace-steps",
        type=int,
        default=DEFAULT_GRACE_STEPS,
        help="the grace window, counted as --max-steps is: optimizer steps of the base config, i.e. grace-steps x its "
        f"images per step; before it no trial is judged stuck and ASHA cuts none (default {DEFAULT_GRACE_STEPS})",
    )
    b.add_argument(
        "--chance-margin",
        type=float,
        default=DEFAULT_CHANCE_MARGIN,
        help=f"Go line = log(C) - margin (default {DEFAULT_CHANCE_MARGIN}: 5.6 for 400 ids)",
    )
    b.add_argument("--first-rung-steps", type=int, help="ASHA's first rung, counted as --max-steps is (default: the grace window); "
                   "earlier cuts the worse trials sooner (benchmarks/early_stop.py measures what it risks)")
    b.add_argument("--verdict", choices=VERDICTS, default=EARLY, help="early (default): a trial whose evidence says it cannot reach the "
                   "Go line by its budget stops before the grace window (docs/causes.md); window: the seed's Go/No-Go at the window only")
    b.add_argument("--keep-going", action="store_true", help="run every trial even when the stuck trials agree on a cause no searched "
                   "value fixes (default: the search stops itself, exit 3; docs/verdicts.md)")
    b.add_argument("--repair", action=argparse.BooleanOptionalAction, default=False, help="a trial stopped as stuck for a cause a "
                   "config value fixes (head LR too low, ...) comes back with the fix, sized from its head (default: off; docs/verdicts.md)")
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
        help=f"pbt: optimizer steps of the base config between two looks at a trial (default {DEFAULT_PERTURBATION_INTERVAL})",
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
    r.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every ended trial's newest 2 checkpoints (4 under PBT); default: deleted when the trial ends, but the "
        "winner's last and an errored trial's newest",
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
        "--optuna-storage",
        nargs="?",
        const="",
        metavar="URL",
        help="keep the search's Optuna study in a database, named after --name, for optuna-dashboard URL (live) and "
        "optuna.load_study: any RDB URL Optuna accepts (sqlite:///path.db, postgresql://...); with no URL, optuna.db "
        "in the experiment folder (--searcher optuna only)",
    )
    o.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files per trial (off by default: every result costs the driver time)",
    )
    o.add_argument("--inject-fault", metavar="STEP:KEY=VALUE", help=argparse.SUPPRESS)  # reliability tests only
    o.add_argument("--skip-preflight", action="store_true", help="skip the pre-flight checks (data, wiring, overfit)")
    o.add_argument(
        "--preflight-on",
        choices=PREFLIGHT_PLACES,
        default="auto",
        help="where the pre-flight runs: this driver, or one trial's resources (a Ray task before the first trial); auto "
        "(default): a trial's when this driver has no GPU and trials get one (--gpus-per-trial > 0), else the driver",
    )
    return p


def _check_metric(args, job: Job) -> None:
    """``--metric`` must be reported by every trial; ``--mode`` follows it (higher R@K is better, lower CE)."""
    if args.metric not in job.metrics:
        raise UserError(f"--metric {args.metric} is not one this training function reports; use one of {', '.join(job.metrics)}")
    better = "max" if args.metric in EVAL_METRICS else "min"
    if args.mode is None:
        args.mode = better
    elif args.mode != better:
        word = "higher" if better == "max" else "lower"
        raise UserError(f"--metric {args.metric} is better when {word}: use --mode {better} (or leave --mode out)")


def _check_args(args, job: Job) -> None:
    _check_metric(args, job)
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
    positive("--first-rung-steps", args.first_rung_steps)
    positive("--chance-margin", args.chance_margin)
    positive("--cpus-per-trial", args.cpus_per_trial)
    positive("--gpus-per-trial", args.gpus_per_trial, allow_zero=True)
    positive("--max-concurrent", args.max_concurrent)
    positive("--max-failures", args.max_failures, allow_zero=True)
    positive("--checkpoint-every", args.checkpoint_every)
    positive("--perturbation-interval", args.perturbation_interval)
    if args.scheduler == PBT:
        check_pbt_flags(args, job.perturbable)
    if args.optuna_storage is not None and not args.resume and (args.scheduler == PBT or args.searcher == "random"):
        why = "--scheduler pbt draws its trials at random" if args.scheduler == PBT else "--searcher random draws the trials"
        raise UserError(f"--optuna-storage keeps the Optuna study the trials are proposed from, and {why}: there is no study; drop --optuna-storage")
    if args.repair and not args.resume and (args.scheduler == PBT or args.searcher == "random"):
        raise UserError("--repair proposes each repair to the Optuna study under ASHA; drop --repair or --scheduler pbt / --searcher random")
    if args.reduction_factor <= 1:
        raise UserError(f"--reduction-factor is {args.reduction_factor}, but must be > 1")
    if (args.first_rung_steps or 0) > args.max_steps:
        raise UserError(f"--first-rung-steps {args.first_rung_steps} exceeds --max-steps {args.max_steps}; lower it")
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


def read_points_file(path: str) -> list[dict[str, Any]]:
    """The ``--points-to-evaluate`` file: a JSON/YAML list of mappings (keys checked by `read_points`)."""
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


def read_points(path: Optional[str], space: dict[str, Domain], job: Job) -> list[dict[str, Any]]:
    """The configs Optuna tries first: each key one the space searches, each value typed as the config wants it
    (YAML 1.1 reads 1e-6 as a string: Optuna and params.json get numbers)."""
    if path is None:
        return []
    points = read_points_file(path)
    for point in points:
        for key in point:
            if job.key(key) not in space:
                raise UserError(f"--points-to-evaluate names '{key}', which the space does not search ({', '.join(space)})")
    return [{job.key(k): job.value(k, v) for k, v in point.items()} for point in points]


def _experiment_path(args) -> Location:
    """The experiment's folder under ``--storage-path`` (a folder, or a storage URI every node reaches:
    `tuner.storage`), the storage checked writable before Ray starts."""
    name = args.name or f"search-{datetime.now():%Y%m%d-%H%M%S}"
    storage = location(args.storage_path).expanduser().resolve()
    check_writable(storage)
    path = storage / name
    if args.resume:
        if not args.name:
            raise UserError("--resume needs --name: the experiment to continue")
        if not (path / SETTINGS_FILE).is_file():
            raise UserError(f"--resume: '{path}' holds no reid-tune experiment; check --storage-path and --name")
    elif path.exists() and any(path.iterdir()):
        raise UserError(f"experiment '{path}' already exists; pass --resume to continue it or a new --name")
    return path


def _top(space: dict[str, Domain], key: str) -> Optional[float]:
    """The largest value the space may draw for ``key`` (the pre-flight's most favourable head LR); None if not searched."""
    domain = space.get(key)
    if domain is None:
        return None
    return float(max(domain.args) if domain.kind == "choice" else domain.args[1])


def _preflight_on_trial(where: str, resources: Resources) -> bool:
    """``--preflight-on``: whether the pre-flight runs on a trial's resources. A ViT-B/16 pre-flight on a CPU driver
    takes most of an hour (BENCHMARKS.md "real scale"); on the trial's GPU, seconds."""
    if where != "auto":
        return where == "trial"
    import torch

    return bool(resources.gpus_per_trial) and not torch.cuda.is_available()


def run_search(args, job: Job) -> int:
    log = (lambda s: None) if args.quiet else print
    resources = Resources(
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        address=args.address,
        auth_token_file=args.auth_token_file,
    )
    loggers = Loggers(
        tensorboard=args.tensorboard,
        mlflow=args.mlflow,
        wandb=args.wandb,
        wandb_mode=check_wandb(args.wandb) if args.wandb else "offline",
    )
    if args.resume:
        # Continue with the settings the experiment was started with, whatever the flags say now.
        exp = Experiment.open(_experiment_path(args))
        if args.optuna_storage is not None and not exp.settings.optuna_study:
            raise UserError(f"--resume continues '{exp.name}' as it started, with no Optuna storage; drop --optuna-storage")
        exp.settings.job.check(exp.settings.base, log)  # still importable, its data still there, before Ray starts
        return run(exp, resources, resume=True, quiet=args.quiet, loggers=loggers)

    fault = parse_fault(args.inject_fault, job)  # a bad spec fails before the minutes of checks below
    threads = max(1, int(args.cpus_per_trial))  # a trial holds that many CPUs; its torch threads follow
    base = job.read_config(args.config, list(args.overrides), shortcut_values(args))
    explicit_threads = any(o.startswith("threads=") for o in args.overrides)
    base = job.with_harness(base, max_steps=args.max_steps, threads=None if explicit_threads else threads, chance_margin=args.chance_margin)
    name = args.space or job.default_space
    if name is None:
        raise UserError("--trainable needs --space FILE: a YAML space naming keys of your --config (e.g. lr_head: {loguniform: [1.0e-6, 1.0e-1]})")
    space = load_space(name, fields=job.space_keys(base))
    if "max_steps" in space:
        raise UserError("search space: max_steps is the budget; set it with --max-steps, not in the space")
    points = read_points(args.points_to_evaluate, space, job)
    if args.scheduler == PBT:
        perturbed_fields(space, name)  # none: one line, exit 2
    path = _experiment_path(args)
    study_url = None
    if args.optuna_storage is not None:  # checked before the minutes of checks below; nothing written yet
        study_url = storage_url(args.optuna_storage, path)
        check_storage(study_url, path.name, in_experiment=not args.optuna_storage)
    job.check(base, log)
    per_step = job.images_per_step(base, threads)  # the budget's unit: images per optimizer step at the base config
    settings = SearchSettings(
        base=base,
        space={k: d.describe() for k, d in space.items()},
        metric=args.metric,
        mode=args.mode,
        grace_samples=round(args.grace_steps * per_step),
        chance_margin=args.chance_margin,
        verdict=args.verdict,
        keep_going=args.keep_going,
        repair=args.repair,
        first_rung_samples=round(args.first_rung_steps * per_step) if args.first_rung_steps else 0,
        max_samples=round(args.max_steps * per_step),
        num_trials=args.num_trials,
        reduction_factor=args.reduction_factor,
        seed=args.seed,
        max_failures=args.max_failures,
        # a trial that may be retried checkpoints, so the retry continues instead of starting over
        checkpoint_every=args.checkpoint_every if args.checkpoint_every is not None else (DEFAULT_CHECKPOINT_EVERY if args.max_failures else 0),
        inject_fault=fault,
        threads=threads,
        scheduler=args.scheduler,
        searcher=args.searcher or ("random" if args.scheduler == PBT else "optuna"),
        perturbation_interval=round(args.perturbation_interval * per_step) if args.scheduler == PBT else 0,
        images_per_step=per_step,
        keep_checkpoints=args.keep_checkpoints,
        optuna_study=shown(study_url) if study_url else None,
        **job.located(),
    )
    disk = search_plan(settings, lambda: job.checkpoint_bytes(settings.base, settings.threads), resources.max_concurrent,
                       resources.cpus_per_trial, resources.gpus_per_trial, on_cluster=resources.address is not None)  # fmt: skip
    check_disk(disk, path, log=log)  # before minutes of pre-flight, before Ray starts
    on_trial = not args.skip_preflight and _preflight_on_trial(args.preflight_on, resources)
    if not args.skip_preflight and not on_trial:
        job.preflight(base, head_lr=_top(space, "head_lr"), threads=threads, log=log)
    preflight = {"head_lr": _top(space, "head_lr")} if on_trial else None
    return run(
        Experiment(path, settings), resources, space=space, points=points, quiet=args.quiet, loggers=loggers,
        preflight=preflight, optuna_storage=study_url,
    )


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv, prog)
    try:
        job = job_for(args.trainable)
        _check_args(args, job)
        return run_search(args, job)
    except UserError as err:
        return cli_exit(err, parser.prog)
    except KeyboardInterrupt:  # Ctrl-C before the trials started, or a second one while they stop
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
