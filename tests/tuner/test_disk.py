"""The disk a search's checkpoints take: planned and checked before Ray starts, ended trials' checkpoints deleted,
the disk used in the summary (issue 27).

The refusals patch the free-space reading (a size-limited folder needs root to mount); the searches are real
(the shared Ray session, the tiny model, whose trial checkpoint is ~41 MB).
"""

from __future__ import annotations

import re

import pytest

from reid_core.config import TrainConfig
from reid_core.job import ReIDJob
from tests.tuner.conftest import sequential_search_args
from tuner.disk import DiskPlan, concurrency, plan
from tuner.search import main as search_main

POINTS = [{"head_lr": 1e-2}, {"head_lr": 3e-3}, {"head_lr": 1e-6}]  # a winner, a learner, one stuck at chance
SHORT = ["--max-steps", "80", "--grace-steps", "40", "--max-failures", "1", "--checkpoint-every", "20"]


def checkpoints_of(exp) -> dict[str, int]:
    """Trial folder name -> how many Ray checkpoints it holds."""
    return {t.name: len(list(t.glob("checkpoint_*"))) for t in exp.iterdir() if t.is_dir()}


def test_a_vit_b16_search_plan():
    """The issue's arithmetic: 8 trials of 1.9 GB, two kept each, 8 at once: 17 checkpoints at the peak, not 16 x 8."""
    size = 1_900_000_000
    assert plan(size, checkpointing=True, pbt=False, steps=450, checkpoint_every=50, concurrent=8, num_trials=8,
                keep_checkpoints=False).storage_bytes == 17 * size  # fmt: skip
    two_at_once = plan(size, checkpointing=True, pbt=False, steps=450, checkpoint_every=50, concurrent=2, num_trials=8,
                       keep_checkpoints=False)  # fmt: skip
    assert two_at_once == DiskPlan(size, 2, 2, 1, "") and two_at_once.storage_bytes == 5 * size
    kept_all = plan(size, checkpointing=True, pbt=False, steps=450, checkpoint_every=50, concurrent=2, num_trials=8,
                    keep_checkpoints=True)  # fmt: skip
    assert kept_all.storage_bytes == 16 * size  # every trial's two
    assert plan(size, checkpointing=True, pbt=True, steps=450, checkpoint_every=0, concurrent=2, num_trials=8,
                keep_checkpoints=False).kept == 4  # fmt: skip
    assert plan(size, checkpointing=False, pbt=False, steps=450, checkpoint_every=0, concurrent=2, num_trials=8,
                keep_checkpoints=False) is None  # fmt: skip
    # one GPU, --gpus-per-trial 0.5: two at once; on a cluster without --max-concurrent every trial counts
    assert concurrency(8, None, 1.0, 0.5, cpus=16, gpus=1, cluster=False)[0] == 2
    assert concurrency(8, None, 1.0, 1.0, cpus=16, gpus=0, cluster=True)[0] == 8
    assert concurrency(8, 3, 1.0, 1.0, cpus=16, gpus=0, cluster=True) == (3, "")


def test_checkpoint_size_is_counted_before_one_is_written(tmp_path):
    """The driver's estimate against a real trial checkpoint (CE + SDM: the text tower's moments exist too)."""
    import torch

    from reid_core.trainer import Trainer

    cfg = TrainConfig(synthetic_identities=40, batch_size=8, ce_only_steps=0, sdm_ramp_steps=0, head_guard=True, device="cpu")
    trainer = Trainer(cfg)
    for _ in range(2):
        trainer.train_step()
    torch.save(trainer.state_dict(), tmp_path / "trainer.pt")
    written = (tmp_path / "trainer.pt").stat().st_size
    assert abs(ReIDJob().checkpoint_bytes(cfg.to_dict()) - written) < 0.01 * written


def test_a_search_whose_checkpoints_cannot_fit_is_refused_in_one_line_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tuner.disk.free_bytes", lambda folder: 50_000_000)  # a 50 MB disk
    started = []
    monkeypatch.setattr("tuner.search.run", lambda *a, **k: started.append(a) or 0)  # where Ray would start
    args, storage = sequential_search_args(tmp_path, "full", POINTS)
    assert search_main([*args, *SHORT]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.match(
        r"python -m tuner\.search: error: checkpoints need \d+\.\d [MG]B on --storage-path '.*' \(1 concurrent trial\(s\) x 2 kept "
        r"x \d+\.\d MB \+ 1 kept after, \+ 1 being written per running trial\) but it has 50\.0 MB free; change it with "
        r"--max-failures 0 \(no retries, no checkpoints outside PBT\), a larger --checkpoint-every, fewer trials at once "
        r"\(--max-concurrent\), or a --storage-path with more room$",
        err,
    ), err
    assert not started and not (storage / "full").exists()
    # what the line names changes it: without retries nothing checkpoints, and the search goes on to Ray
    assert search_main([*args, *SHORT[:4]]) == 0 and len(started) == 1


@pytest.fixture(scope="module")
def janitor_search(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("disk")
    args, storage = sequential_search_args(tmp, "tidy", POINTS)
    return search_main([*args, *SHORT]), storage / "tidy"


def test_ended_trials_keep_no_checkpoint_but_the_winners_last(janitor_search, capsys):
    code, exp = janitor_search
    assert code == 0
    import pandas as pd

    frame = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    winner = frame.iloc[0]["trial_dir"]
    held = checkpoints_of(exp)
    assert held.pop(winner) == 1 and set(held.values()) == {0}, checkpoints_of(exp)


def test_the_plan_is_printed_before_the_trials_and_the_disk_used_after(ray_session, tmp_path, capsys):
    args, storage = sequential_search_args(tmp_path, "kept", POINTS[:2])
    assert search_main([*args, *SHORT, "--keep-checkpoints"]) == 0
    out = capsys.readouterr().out
    plan_line = re.search(r"checkpoints: up to \d+\.\d [MG]B on '.*kept' \(1 concurrent trial\(s\) x 2 kept x (\d+\.\d) MB \+ 2 kept after\)", out)
    assert plan_line and out.index(plan_line.group(0)) < out.index("searching")
    assert set(checkpoints_of(storage / "kept").values()) == {2}  # --keep-checkpoints: every trial's two
    used = re.search(r"disk: (\d+\.\d) ([MG])B in .*kept \(4 checkpoint\(s\), (\d+\.\d) ([MG])B: all kept \(--keep-checkpoints\)\)", out)
    assert used, out
    mb = {"M": 1.0, "G": 1000.0}
    folder, kept = float(used.group(1)) * mb[used.group(2)], float(used.group(3)) * mb[used.group(4)]
    # the plan is an upper bound: a CE-only trial's checkpoint holds no text-tower moments (15 MB here against 41.6)
    assert 0 < kept <= min(folder, 4 * float(plan_line.group(1)))

