"""The Ray fence: the tested range is declared once and checked at start-up; each piece falls back, never crashes.

No Ray session: the version check reads a monkeypatched ``ray.__version__``, the fallbacks get objects
without Ray's internals.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray

from tuner._ray_compat import (
    RAY_CHECKED,
    TESTED_RAY,
    check_ray_version,
    mlflow_batching,
    mlflow_run,
    optuna_handles,
    optuna_study,
    quiet_ray_logs,
)
from tuner._ray_compat.version import in_tested_range

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_pins_ray_to_the_range_the_start_up_check_names():
    (ray_spec,) = re.findall(r'^\s*"(ray\[[^"]*)"', PYPROJECT.read_text(), flags=re.M)  # tomllib is 3.11+
    assert ray_spec == f"ray[tune]{TESTED_RAY}"
    assert in_tested_range(RAY_CHECKED)


@pytest.mark.parametrize("version", ["2.50.0", "2.55.1", "2.60.0", "2.60.3"])
def test_a_ray_in_the_tested_range_gets_no_note(version, monkeypatch, capsys):
    monkeypatch.setattr(ray, "__version__", version)
    check_ray_version()
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("version", ["2.61.0", "2.61.0rc1", "3.0.0.dev0", "2.49.2", "2.9.3", "nightly"])
def test_a_ray_outside_the_tested_range_gets_one_note_line_naming_the_range_and_the_fix(version, monkeypatch, capsys):
    monkeypatch.setattr(ray, "__version__", version)
    check_ray_version()  # a note, not an error: it returns, the search goes on
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"note: Ray {version} is outside ")
    assert f"ray[tune]{TESTED_RAY}" in err and RAY_CHECKED in err
    assert "no PBT lineage" in err and f"pip install 'ray[tune]{TESTED_RAY}'" in err


def test_without_rays_internals_each_fence_answers_none_so_its_caller_does_it_rays_way():
    bare = SimpleNamespace(mlflow_util=SimpleNamespace())  # a Ray whose private attributes were renamed
    assert optuna_study(bare) is None
    assert optuna_handles(bare, "t1") is None
    assert mlflow_batching(bare) is False
    assert mlflow_run(bare, "t1") is None


def test_quieted_ray_lines_are_dropped_and_others_still_show(caplog):
    quiet_ray_logs()
    quiet_ray_logs()  # twice (a second search in one process): still one filter
    token = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert len(token.filters) == 1
    with caplog.at_level(logging.INFO):
        token.warning("Token authentication is enabled for this Ray cluster (...)")
        token.warning("Token file unreadable")
        logging.getLogger("ray._private.worker").error("Unhandled error (suppress with ...): Should not have reached here")
        logging.getLogger("ray._private.worker").error("Unhandled error: a real one")
    assert [r.getMessage() for r in caplog.records] == ["Token file unreadable", "Unhandled error: a real one"]


def test_no_ray_internals_outside_the_fence():
    # The names the fence exists for; a new reach into Ray's private API belongs in tuner/_ray_compat/.
    private = re.compile(
        r"_ot_(study|trials)|_completed_trials|_trial_state|\b_exploit\b|_force_on_current_node|_(start|cleanup)_logging_actor"
        r"|_remote_logger_class|_logger_actor_cls|_trial_logging_futures|_trial_runs|_get_client|_restore_from_remote"
        r"|ray\._private|ray\.train\._internal|ray\.air\._internal|ray\.air\.util"
    )
    root = PYPROJECT.parent
    hits = [
        f"{path.relative_to(root)}:{n}"
        for package in ("tuner", "reid_core", "search_spaces")
        for path in sorted((root / package).rglob("*.py"))
        if "_ray_compat" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert hits == []


def test_on_the_tested_ray_the_mlflow_fence_reaches_rays_runs(tmp_path):
    pytest.importorskip("mlflow")
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    callback = MLflowLoggerCallback(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="fence")
    callback.setup()
    assert mlflow_batching(callback)  # else --mlflow would log one call per metric, as Ray does
    assert mlflow_run(callback, "a trial it opened no run for") is None
