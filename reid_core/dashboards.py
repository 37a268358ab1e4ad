"""Dashboards for the plain job: every step's metrics to MLflow or W&B, the same way the search logs its trials.

The search logs through Ray Tune's own ``MLflowLoggerCallback`` (one MLflow run per trial, grouped
in an MLflow experiment named after the search's) and ``WandbLoggerCallback`` (one W&B run per
trial, grouped by the search's name: `tuner.wandb_callback`); the plain job logs one run through
the same APIs. Both are optional extras (``pip install 'reid-tune[mlflow]'``, ``'reid-tune[wandb]'``):
asking for one without its package is one line naming the extra. W&B's mode (`wandb_mode`) is
decided here for both. No Ray here.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from reid_core.errors import UserError

# MLflow 3 refuses a plain ./mlruns folder as a tracking store unless MLFLOW_ALLOW_FILE_STORE=true;
# a local SQLite file is its recommended local store and needs no server.
DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"


def require_mlflow(flag: str = "--mlflow") -> None:
    """One line naming the extra to install when MLflow is missing (before anything starts)."""
    if importlib.util.find_spec("mlflow") is None:
        raise UserError(f"{flag} needs MLflow, which is not installed; pip install 'reid-tune[mlflow]'")


class MlflowLog:
    """A plain run's metrics as one MLflow run: its config as params, every step's numbers as metrics.

    The run is created at the first step, so a config or data error leaves no empty run behind."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any]):
        require_mlflow()
        self._where = (tracking_uri, experiment, run_name)
        self._params = dict(params)
        self.run_id: Optional[str] = None

    def _start(self) -> None:
        import mlflow

        tracking_uri, experiment, run_name = self._where
        self._client = mlflow.MlflowClient(tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self._client.create_experiment(experiment)
        self.run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        self._client.log_batch(self.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in self._params.items()])
        self._metric = mlflow.entities.Metric

    def __call__(self, metrics: Mapping[str, Any]) -> None:
        if self.run_id is None:
            self._start()
        step = int(metrics["step"])
        numbers = [
            self._metric(key, float(value), 0, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ]
        self._client.log_batch(self.run_id, metrics=numbers)

    def close(self, failed: bool = False) -> None:
        if self.run_id is not None:
            self._client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


# --- Weights & Biases ---------------------------------------------------------------

DEFAULT_WANDB_PROJECT = "reid-tune"
# WANDB_MODE values W&B itself accepts, and what each means ("dryrun" and "run" are its old names)
WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
# what every reid-tune W&B run passes to wandb.init: no banners or run links on the terminal (the run's
# files and `wandb sync` say where it is); everything else as W&B does by default
WANDB_SETTINGS = {"silent": True}
_BAD_PROJECT_CHARACTERS = "/\\#?%:"  # W&B refuses project names with these


def require_wandb(flag: str = "--wandb") -> None:
    """One line naming the extra to install when wandb is missing (before anything starts)."""
    if importlib.util.find_spec("wandb") is None:
        raise UserError(f"{flag} needs W&B (wandb), which is not installed; pip install 'reid-tune[wandb]'")


def check_wandb_project(project: str, flag: str = "--wandb") -> None:
    """A project name W&B accepts, checked before anything starts (W&B itself would refuse it in every trial)."""
    bad = sorted({c for c in project if c in _BAD_PROJECT_CHARACTERS})
    if not project.strip() or bad or len(project) > 128:
        reason = f"holds {' '.join(bad)}" if bad else "is empty" if not project.strip() else "is over 128 characters"
        raise UserError(
            f"{flag} project '{project}' {reason}; W&B project names are up to 128 characters without "
            f"{_BAD_PROJECT_CHARACTERS}"
        )


def wandb_mode(flag: str = "--wandb") -> str:
    """``online``, ``offline`` or ``disabled``, decided before anything starts, as W&B users expect.

    ``WANDB_MODE`` wins when set. Unset: ``online`` when W&B would find an API key without asking
    (``WANDB_API_KEY``, ``wandb login``), else ``offline``: the runs are written to disk for
    ``wandb sync`` and nothing needs a network. ``WANDB_MODE=online`` without a key is one line.
    """
    require_wandb(flag)
    asked = os.environ.get("WANDB_MODE", "").strip().lower()
    if asked and asked not in WANDB_MODES:
        raise UserError(f"WANDB_MODE is '{asked}', but must be online, offline or disabled (or unset)")
    if asked:
        mode = WANDB_MODES[asked]
        if mode == "online" and wandb_key_found() is False:
            raise UserError(
                f"{flag} with WANDB_MODE=online needs a W&B API key: run `wandb login` or set WANDB_API_KEY "
                "(or unset WANDB_MODE to log offline and `wandb sync` later)"
            )
        return mode
    return "online" if wandb_key_found() else "offline"


def wandb_key_found() -> Optional[bool]:
    """Whether W&B has credentials without prompting, read locally (nothing sent, no W&B process started):
    ``WANDB_API_KEY``, an identity token file, a key in W&B's settings files, or `wandb login`'s .netrc
    entry for its host, as ``wandb.api.api_key`` looks them up. None when this wandb cannot be asked."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        settings = wandb_setup.singleton().settings
        if settings.api_key or settings.identity_token_file:
            return True
        host = settings.base_url
    except (ImportError, AttributeError):  # a wandb whose internals moved: let W&B itself decide
        return None
    try:
        return bool(wbauth.read_netrc_auth(host=host))
    except Exception:  # an unreadable .netrc or a malformed key: W&B would refuse it too
        return False


def wandb_folder(folder: Any) -> Path:
    """Where W&B writes its ``wandb/`` folder for runs kept with ``folder``: ``WANDB_DIR`` when the user set
    it (as W&B does), else that folder when it is on this machine, else (an experiment on object storage)
    the current folder."""
    if os.environ.get("WANDB_DIR"):
        return Path(os.environ["WANDB_DIR"]).expanduser().resolve()
    return folder if isinstance(folder, Path) else Path.cwd()


def wandb_note(mode: str, project: str, folder: Path) -> str:
    """One line saying where the W&B runs go (W&B's own banners are off: `WANDB_SETTINGS`)."""
    if mode == "disabled":
        return "W&B: disabled (WANDB_MODE=disabled): nothing logged"
    if mode == "online":
        return f"W&B: logging to project {project} online; run files in {folder / 'wandb'}"
    why = f"WANDB_MODE={os.environ['WANDB_MODE'].strip()}" if os.environ.get("WANDB_MODE") else "no W&B API key found"
    return (
        f"W&B: offline ({why}): runs in {folder / 'wandb'}; upload them later with "
        f"`wandb sync {folder / 'wandb'}/offline-run-*`"
    )


class WandbLog:
    """A plain run's metrics as one W&B run: its config as the run's config, every step's numbers logged at
    that step. Started at the first step, so a config or data error leaves no empty run behind."""

    def __init__(self, project: str, group: str, run_name: str, config: Mapping[str, Any], folder: Path, mode: str):
        require_wandb()
        self._init = dict(
            project=project, group=group, name=run_name, job_type="train", config=dict(config),
            dir=str(folder), mode=mode, settings=dict(WANDB_SETTINGS),
        )  # fmt: skip
        self.run: Any = None

    def __call__(self, metrics: Mapping[str, Any]) -> None:
        if self.run is None:
            import wandb

            Path(self._init["dir"]).mkdir(parents=True, exist_ok=True)  # W&B warns about a missing git root otherwise
            try:
                self.run = wandb.init(**self._init)
            except wandb.errors.Error as err:  # e.g. online without a network: W&B's own words, on one line
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                message = f"--wandb: W&B could not start the run: {first}; set WANDB_MODE=offline to log offline"
                raise UserError(message) from None
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(numbers, step=int(metrics["step"]))

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)


class Dashboards:
    """Several dashboards as the one ``dashboard`` a `reid_core.train.RunWriter` calls (``--mlflow --wandb``)."""

    def __init__(self, *logs: Any):
        self.logs = [log for log in logs if log is not None]

    def __call__(self, metrics: Mapping[str, Any]) -> None:
        for log in self.logs:
            log(metrics)

    def close(self, failed: bool = False) -> None:
        for log in self.logs:
            log.close(failed=failed)


def add_mlflow_argument(parser: Any, what: str) -> None:
    """``--mlflow [TRACKING_URI]``, the same for the search and the plain job; ``what``: the help's first words."""
    parser.add_argument(
        "--mlflow",
        nargs="?",
        const=DEFAULT_MLFLOW_URI,
        metavar="TRACKING_URI",
        help=f"{what} (default store {DEFAULT_MLFLOW_URI}; needs pip install 'reid-tune[mlflow]')",
    )


def add_wandb_argument(parser: Any, what: str) -> None:
    """``--wandb [PROJECT]``, the same for the search and the plain job; ``what``: what each run holds."""
    parser.add_argument(
        "--wandb",
        nargs="?",
        const=DEFAULT_WANDB_PROJECT,
        metavar="PROJECT",
        help=f"log {what} to Weights & Biases project PROJECT (default {DEFAULT_WANDB_PROJECT}): online when W&B has an "
        "API key, else offline into a wandb/ folder for `wandb sync`; WANDB_MODE overrides; needs pip install "
        "'reid-tune[wandb]'",
    )


def check_wandb(project: str) -> str:
    """Everything ``--wandb PROJECT`` needs, checked before anything starts; returns W&B's mode."""
    require_wandb()
    check_wandb_project(project)
    return wandb_mode()
