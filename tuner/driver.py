"""The Ray wiring: start or join Ray, build the Tuner (or restore one), fit, summarise.

``tuner.search`` parses and checks everything a user can get wrong and builds the
`SearchSettings`; this module only runs them. Optuna proposes, `RecheckingASHA` ranks on images
seen (or, with ``--scheduler pbt``, random starts and `tuner.pbt.LineagePBT`), `ChanceLevelStopper`
kills trials stuck at chance, `ProgressPrinter` says what happened.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from reid_core.errors import INTERRUPTED, UserError
from tuner.cluster import check_handshake, use_token
from search_spaces import Domain, to_tune
from tuner.experiment import Experiment
from tuner.settings import PBT, SearchSettings


@dataclass(frozen=True)
class Resources:
    """What each trial holds and where Ray runs; not part of the experiment (a resume may change them)."""

    cpus_per_trial: float = 1.0  # CPUs per trial (its torch threads follow)
    gpus_per_trial: Optional[float] = None  # GPUs per trial, fractions allowed; None = 1 with CUDA, else 0
    max_concurrent: Optional[int] = None  # trials at once; None = what resources allow
    address: Optional[str] = None  # an existing cluster to join; None = start Ray here
    auth_token_file: Optional[str] = None  # that cluster's token file (RAY_AUTH_MODE=token)


def connect(resources: Resources) -> bool:
    """Start or join Ray; returns whether we started it (and so should shut it down)."""
    import ray

    if ray.is_initialized():  # e.g. a notebook or a test session that already holds one
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": logging.WARNING}
    if resources.address:
        use_token(resources.auth_token_file)  # tuner.search did this before ray was imported; a library caller may not
        check_handshake(resources.address)  # a refused token is one line in seconds, not 20 s of C++ warnings
        try:
            ray.init(address=resources.address, **kwargs)
        except Exception as err:  # ConnectionError, RuntimeError, auth failures: all the user's to fix
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(
                f"cannot connect to the Ray cluster at '{resources.address}': {first}; check the address, and for a "
                "cluster with RAY_AUTH_MODE=token pass its token with --auth-token-file"
            ) from None
    else:
        ray.init(include_dashboard=False, **kwargs)  # no dashboard: nothing listens beyond this process
    return True


PREFLIGHT_PLACES = ("auto", "driver", "trial")  # --preflight-on


def preflight_on_trial(settings: SearchSettings, resources: Resources, head_lr: Optional[float], log) -> None:
    """The job's pre-flight as one Ray task holding what one trial holds (its GPU, which this driver may lack)."""
    import ray
    import torch

    from tuner.trainable import run_preflight

    gpus = resources.gpus_per_trial if resources.gpus_per_trial is not None else float(torch.cuda.is_available())
    log(f"pre-flight on a trial's resources ({resources.cpus_per_trial:g} CPU, {gpus:g} GPU)")
    task = ray.remote(run_preflight).options(num_cpus=resources.cpus_per_trial, num_gpus=gpus)
    lines, error = ray.get(task.remote(settings.trainable, settings.trainable_root, settings.base, head_lr, settings.threads))
    for line in lines:
        log(line)
    if error is not None:
        raise UserError(error)


def fast_reporting() -> None:
    """Every optimizer step is reported to Ray; keep that from slowing the trial down.

    - Ray's result buffering, with asynchronous reporting (``tuner._ray_compat.FastReporting``):
      the trial's actor collects results for 0.2 s and the driver processes them together while
      the trial trains on; every result is still logged, and ASHA and the chance-level rule still
      judge every result in order.
    - One logger, ``result.json`` (what ``tuner.results`` and Ray's own readers use), instead of
      Ray's three: ``progress.csv`` and TensorBoard events would be written per result too, by
      the driver, on CPUs the trials share. ``--tensorboard`` adds TensorBoard back.

    ``setdefault``: a user's own settings of these variables win.
    """
    from tuner._ray_compat import RESULT_BUFFER_LENGTH

    os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", str(RESULT_BUFFER_LENGTH))
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's legacy reporter honours verbose=0; ours prints instead


@dataclass(frozen=True)
class Loggers:
    """Where every trial's per-step results go besides result.json (what the tables read)."""

    tensorboard: bool = False  # TensorBoard event files per trial
    mlflow: Optional[str] = None  # an MLflow tracking URI: one MLflow run per trial, in an experiment named as ours
    wandb: Optional[str] = None  # a W&B project: one W&B run per trial, grouped by the experiment's name
    wandb_mode: str = "offline"  # online, offline or disabled (reid_core.dashboards.wandb_mode)

    def callbacks(self, exp_dir: Path) -> list:
        """Ray Tune logger callbacks: result.json always (what tuner.results reads), then the asked-for ones."""
        from ray.tune.logger import TBXLoggerCallback

        from tuner._ray_compat import JsonLogger

        out = [JsonLogger()]  # Ray's, keeping a restarted trial's rows (tuner._ray_compat)
        if self.tensorboard:
            out.append(TBXLoggerCallback())
        if self.mlflow:
            from tuner.mlflow_callback import BatchedMLflowLoggerCallback

            tags = {"reid_tune.experiment": str(exp_dir)}
            out.append(BatchedMLflowLoggerCallback(self.mlflow, experiment_name=exp_dir.name, tags=tags))
        if self.wandb and self.wandb_mode != "disabled":  # disabled: no logging actor per trial for nothing
            from tuner.wandb_callback import wandb_callback

            out.append(wandb_callback(self.wandb, exp_dir, self.wandb_mode))
        return out


def run(
    exp: Experiment,
    resources: Resources,
    *,
    space: Optional[dict[str, Domain]] = None,
    points: Optional[list[dict[str, Any]]] = None,
    resume: bool = False,
    quiet: bool = False,
    loggers: Loggers = Loggers(),
    preflight: Optional[dict[str, Any]] = None,
    optuna_storage: Optional[str] = None,
) -> int:
    """Run (or, with ``resume``, continue) the search; returns the exit code of its summary.

    ``preflight``: ``{"head_lr": ...}`` to run the pre-flight on one trial's resources (`preflight_on_trial`) once
    Ray has started, before the experiment is saved; a failure is the search's one-line error, nothing written.
    ``optuna_storage``: the database URL the Optuna study is kept in (`tuner.optuna_storage`), checked
    already; on ``resume`` Ray's restored searcher holds its own.

    Ctrl-C: Ray Tune takes the first, stops the trials and saves what a resume needs; the summary
    then says how to resume and the code is 130. Ray puts Python's own handler back after the first,
    so a second Ctrl-C raises KeyboardInterrupt at once, which ``tuner.search`` turns into the same
    one line and 130.
    """
    from tuner._ray_compat import check_ray_version, quiet_ray_logs

    quiet_ray_logs()
    check_ray_version()  # one note line when the installed Ray is outside the tested range
    started_ray = connect(resources)
    try:
        if preflight is not None:
            preflight_on_trial(exp.settings, resources, preflight["head_lr"], (lambda s: None) if quiet else print)
        return _fit(exp, resources, space, points or [], resume, quiet, loggers, optuna_storage)
    except KeyboardInterrupt:  # the second Ctrl-C: out at once, Ray's own state as it was last saved
        from tuner.progress import resume_line

        print(f"interrupted{'; ' + resume_line(exp.path) if exp.saved else ''}", file=sys.stderr, flush=True)
        return INTERRUPTED
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _fit(exp: Experiment, resources: Resources, space, points, resume: bool, quiet: bool, loggers: Loggers,
         optuna_storage: Optional[str]) -> int:  # fmt: skip
    import optuna
    import torch
    from ray import tune

    from reid_core.actions import Agreement
    from tuner.checkpoints import CheckpointJanitor
    from tuner.repairs import BOOKS, RepairBook, RepairWatch, bounds_of
    from tuner.disk import KEPT_ASHA, KEPT_PBT
    from tuner.progress import EndReasonRecorder, ProgressPrinter, summarise
    from tuner.schedulers import rung_milestones
    from tuner.stoppers import HALTS, ChanceLevelStopper
    from tuner.trainable import train_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created" is not news
    fast_reporting()
    settings, exp_dir = exp.settings, exp.path
    gpus = resources.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    pbt = settings.scheduler == PBT
    parameters = {
        "base": settings.base,
        "spec": settings.trainable,
        "root": settings.trainable_root,
        "max_samples": settings.max_samples,
        "threads": settings.threads,
        "metric": settings.metric,
        "eval_at_samples": rung_milestones(settings.rung_samples, settings.max_samples, settings.reduction_factor)
        if settings.evaluates_at_rungs and not pbt
        else (),
        # PBT looks at a trial where it checkpoints (and evaluates, for a retrieval metric): tuner.lineage
        "pbt": {"burn_in": settings.grace_samples, "interval": settings.perturbation_interval} if pbt else None,
    }
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial, **parameters, checkpoint_every=settings.checkpoint_every, inject_fault=settings.inject_fault
        ),
        {"cpu": resources.cpus_per_trial, "gpu": gpus},
    )
    agreement = None if settings.keep_going else Agreement(list(settings.space))  # stop the search on a cause none of it fixes
    book = None
    if repairs_on(settings):  # the book before the searcher: a restored searcher finds it by the experiment's path
        book = BOOKS[str(exp_dir)] = RepairBook(exp_dir)
    stopper = ChanceLevelStopper(
        settings.grace_samples, settings.chance_margin, keywords=settings.rule_keywords_of(), agreement=agreement,
        base=settings.base, key=str(exp_dir), repairs=book is not None, bounds=bounds_of(settings.space),
    )  # fmt: skip
    recorder = EndReasonRecorder(stopper, exp)
    kept = KEPT_PBT if settings.scheduler == PBT else KEPT_ASHA  # checkpoints of a running trial: why in tuner.disk
    janitor = CheckpointJanitor(recorder, exp, kept, keep=settings.keep_checkpoints)  # after the recorder: it reads why a trial ended
    progress = ProgressPrinter(recorder, settings, quiet=quiet)
    run_config = tune.RunConfig(
        name=exp_dir.name,
        storage_path=str(exp_dir.parent),
        stop=stopper,
        callbacks=[recorder, janitor, progress, *([RepairWatch(str(exp_dir))] if book else []), *loggers.callbacks(exp_dir)],
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=kept),
    )
    t0 = time.perf_counter()
    if resume:
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        exp.save()
        searcher, scheduler = _search_and_scheduler(settings, exp_dir, space, points, resources.max_concurrent, optuna_storage)
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(space),
            tune_config=tune.TuneConfig(
                metric=settings.metric,
                mode=settings.mode,
                search_alg=searcher,
                scheduler=scheduler,
                # repairs come on top of --num-trials (at most one per stuck trial and cause); the searcher finishes itself
                num_samples=settings.num_trials * (3 if book else 1),
                # Ray's limit applies to a Searcher (Optuna); random draws take it themselves (below)
                max_concurrent_trials=resources.max_concurrent if settings.searcher == "optuna" else None,
                reuse_actors=True,
            ),
            run_config=run_config,
        )
    if not quiet:
        print(
            f"{'resuming' if resume else 'searching'} {', '.join(settings.space)} over {settings.num_trials} trials of "
            f"up to {settings.max_samples} images each; grace window {settings.grace_samples} images; results in {exp_dir}"
            + (
                f"\nPBT: random starts, then every {settings.perturbation_interval} images after the grace window the "
                f"bottom quarter continues from a copy of a top trial with {'/'.join(settings.perturbed)} perturbed"
                if settings.scheduler == PBT
                else ""
            ),
            flush=True,
        )
        if settings.optuna_study:
            from tuner.optuna_storage import dashboard_command

            print(f"Optuna study '{exp_dir.name}' in {settings.optuna_study}; watch it: {dashboard_command(settings.optuna_study)}", flush=True)
        if loggers.wandb:
            from reid_core.dashboards import wandb_folder, wandb_note

            print(wandb_note(loggers.wandb_mode, loggers.wandb, wandb_folder(exp_dir)), flush=True)
    tuner.fit()
    return summarise(exp, time.perf_counter() - t0, janitor, halt=HALTS.pop(str(exp_dir), None))


def repairs_on(settings: SearchSettings) -> bool:
    """Repairs need a searcher that can be told a config (Optuna) and a scheduler that stops (ASHA, not PBT)."""
    return settings.repair and settings.searcher == "optuna" and settings.scheduler != PBT


def _search_and_scheduler(
    settings: SearchSettings, exp_dir: Path, space: dict[str, Domain], points: list, max_concurrent: Optional[int],
    optuna_storage: Optional[str] = None,
) -> tuple[Any, Any]:  # fmt: skip
    """Optuna (early stops told as pruned; its study in ``optuna_storage`` when given; or random draws,
    ``--searcher random``) and `RecheckingASHA`; or, for ``--scheduler pbt``, random starts (Ray 2.60's PBT
    refuses a search algorithm) and `tuner.pbt.LineagePBT`."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    random_draws = BasicVariantGenerator(points_to_evaluate=points or None, max_concurrent=max_concurrent or 0, random_state=settings.seed)
    if settings.scheduler == PBT:
        import random

        from tuner.pbt import LineagePBT

        random.seed(settings.seed)  # PBT draws its quantile partners and perturbations from Python's random
        perturbed = {k: space[k] for k in settings.perturbed}
        pbt = LineagePBT(exp_dir, perturbed, burn_in=settings.grace_samples, interval=settings.perturbation_interval, seed=settings.seed)
        return random_draws, pbt
    from tuner.schedulers import RecheckingASHA
    from tuner.searchers import PruningOptunaSearch

    if settings.searcher == "random":
        searcher = random_draws
    else:
        kept: dict[str, Any] = {}
        if optuna_storage:  # the study in a database, named after the experiment, its curves thinned
            from tuner.optuna_storage import INTERMEDIATE_EVERY_STEPS, open_storage

            every = INTERMEDIATE_EVERY_STEPS * settings.images_per_step
            kept = {"storage": open_storage(optuna_storage), "study_name": exp_dir.name, "report_every": every}
        kind = PruningOptunaSearch
        if repairs_on(settings):  # proposes a stuck trial's repair before the next draw (tuner.repairs)
            from tuner.repairs import RepairingOptunaSearch

            kind = functools.partial(RepairingOptunaSearch, book_key=str(exp_dir), num_trials=settings.num_trials)
        searcher = kind(  # early-stopped trials reach TPE as pruned, not as completed
            metric=settings.metric,
            mode=settings.mode,
            points_to_evaluate=points or None,
            seed=settings.seed,
            budget_attr="samples",
            max_budget=settings.max_samples,
            **kept,
        )
    scheduler = RecheckingASHA(
        time_attr="samples",  # images seen: trials with different accumulation compare at equal compute
        grace_period=settings.rung_samples,
        max_t=settings.max_samples,
        reduction_factor=settings.reduction_factor,
    )
    return searcher, scheduler
