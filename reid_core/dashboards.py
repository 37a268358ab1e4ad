"""Dashboards for the plain job: every step's metrics to MLflow, the same way the search logs its trials.

The search logs through Ray Tune's own ``MLflowLoggerCallback`` (one MLflow run per trial, grouped
in an MLflow experiment named after the search's); the plain job logs one run through the same
MLflow API. MLflow is an optional extra (``pip install 'reid-tune[mlflow]'``): asking for it
without the package is one line naming the extra. No Ray here.
"""

from __future__ import annotations

import importlib.util
import math
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
