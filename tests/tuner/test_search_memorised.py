"""A real search over a CUHK-PEDES-layout set whose training ids are permuted among its images once: every trial
memorises its images (training CE below the Go line, unseen_ce at chance) and results.csv says stuck_at_chance,
labels_memorised, where the search used to report success. The same set with its own ids: no such verdict."""

from __future__ import annotations

import pandas as pd
import pytest

from reid_core.actions import HALT_EXIT
from tests.reid_core.tiny_datasets import write_cuhk_people
from tests.tuner.conftest import run_search

pytestmark = pytest.mark.ray

POINTS = [{"head_lr": 1e-2}, {"head_lr": 3e-3}]


def search(tmp_path, name: str, permuted: bool) -> tuple[int, pd.DataFrame]:
    data = write_cuhk_people(tmp_path / "data", permuted=permuted).parent
    code, exp = run_search(tmp_path, name, POINTS, extra=["--data", str(data), "--set", "batch_size=16"])
    return code, pd.read_csv(exp / "results.csv", dtype={"trial_id": str})


def test_a_search_over_permuted_ids_names_every_trial_labels_memorised_and_stops_itself(ray_session, tmp_path, capsys):
    code, table = search(tmp_path, "permuted", permuted=True)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == HALT_EXIT and line.startswith("search stopped: 2 trials") and "labels_memorised" in line
    assert len(table) == len(POINTS)
    assert (table.end_reason == "stuck_at_chance").all(), table[["head_lr", "end_reason", "stuck_cause"]]
    assert (table.stuck_cause == "labels_memorised").all(), table[["head_lr", "end_reason", "stuck_cause"]]
    assert (table.best_ce_ema < table.chance_ce - 0.39).all()  # what used to read as success: below the Go line


def test_the_same_search_with_the_right_ids_gets_no_such_verdict(ray_session, tmp_path):
    code, table = search(tmp_path, "right", permuted=False)
    assert code == 0 and len(table) == len(POINTS)
    assert (table.end_reason != "stuck_at_chance").all() and table.stuck_cause.isna().all()  # completed, or cut by ASHA
    assert table.best_ce_ema.min() < table.chance_ce.min() - 0.39
