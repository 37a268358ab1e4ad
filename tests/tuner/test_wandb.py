"""--wandb: every trial's (and a plain run's) per-step metrics in W&B, read back from W&B's own offline run files.

No network and no API key here: W&B runs offline, as it does for a user without a key. Every test
points HOME at a temporary folder (the search's Ray session already does), so W&B's logs land
there, and checks that no W&B service process outlives it.
"""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import pytest

from reid_core.dashboards import wandb_folder, wandb_mode
from reid_core.train import main as train_main
from tests.tuner.conftest import run_search
from tuner.ray_files import read_trial_folders

wandb = pytest.importorskip("wandb")

from tests.tuner.wandb_files import read_runs  # noqa: E402  (needs wandb's protobuf classes)

SHORT_STEPS = 60  # the learner's budget; the stuck trial is stopped after half of it: what matters is what W&B holds
SHORT = ["--skip-preflight", "--max-steps", str(SHORT_STEPS), "--grace-steps", str(SHORT_STEPS // 2)]
W_AND_B_ENV = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_PROJECT", "WANDB_DIR")


def wandb_processes(home: str) -> list[int]:
    """W&B's service processes (``wandb-core``, ``wandb-symon``) started with this HOME."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone meanwhile
            continue
        if command.endswith((b"wandb-core", b"wandb-symon")) and f"HOME={home}".encode() in environ:
            found.append(int(entry.name))
    return found


def assert_no_wandb_process_left(home: str, timeout_s: float = 120.0) -> None:
    # each exits once it sees its parent gone (a second or so; longer when others load the CPUs): a process
    # left behind stays, so a long wait still catches it
    deadline = time.monotonic() + timeout_s
    while wandb_processes(home):
        assert time.monotonic() < deadline, f"W&B service processes left behind: {wandb_processes(home)}"
        time.sleep(0.2)


@pytest.fixture
def no_wandb_account(monkeypatch):
    """A user with wandb installed, no API key and no WANDB_MODE: --wandb must then log offline."""
    for name in W_AND_B_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.ray
def test_a_search_writes_one_offline_wandb_run_per_trial_with_every_steps_ce_ema(ray_session, tmp_path, no_wandb_account, capfd):
    points = [{"head_lr": 1e-2}, {"head_lr": 1e-6}]
    code, exp = run_search(tmp_path, "wb", points, extra=["--wandb", "reid-test", *SHORT])
    assert code == 0
    out = capfd.readouterr()
    assert f"W&B: offline (no W&B API key found): runs in {exp / 'wandb'}" in out.out
    assert not [line for line in (out.out + out.err).splitlines() if line.startswith("wandb:")]  # W&B's banners stay off
    assert not re.findall(r".*(?:wandb|W&B|core_worker).*", out.err, re.IGNORECASE)  # nor W&B's or Ray's complaints
    trials, _ = read_trial_folders(exp)
    runs = {run.id: run for run in read_runs(exp / "wandb")}
    assert sorted(runs) == sorted(t.trial_id for t in trials)  # one W&B run per trial, named by its id
    for trial in trials:
        run = runs[trial.trial_id]
        assert (run.project, run.group, run.exit_code) == ("reid-test", exp.name, 0)  # grouped per experiment, finished
        assert run.config["head_lr"] == trial.sampled["head_lr"]  # the searched value as the run's config
        assert run.series("ce_ema") == {row["step"]: row["ce_ema"] for row in trial.rows}  # every step, as Ray recorded it
    steps = sorted(len(t.rows) for t in trials)
    assert 0 < steps[0] < steps[1] == SHORT_STEPS  # the stuck trial's run ends where the chance-level rule stopped it
    assert_no_wandb_process_left(ray_session)
    assert list(Path(ray_session, ".cache", "wandb", "logs").glob("core-debug-*.log"))  # W&B's own logs: in the temp HOME


@pytest.mark.slow  # W&B's own service process
def test_the_plain_job_logs_the_same_way(tmp_path, no_wandb_account, monkeypatch, capfd):
    home = str(tmp_path / "home")
    monkeypatch.setenv("HOME", home)
    out = tmp_path / "run"
    argv = ["--set", "synthetic_identities=20", "batch_size=8", "max_steps=5", "threads=1", "--out", str(out), "--wandb"]
    try:
        assert train_main(argv) == 0
    finally:
        wandb.teardown()  # the service W&B started in this process (a plain job's process ends here instead)
    printed = capfd.readouterr()
    assert f"W&B: offline (no W&B API key found): runs in {out / 'wandb'}" in printed.out
    assert not [line for line in (printed.out + printed.err).splitlines() if line.startswith("wandb:")]
    (run,) = read_runs(out / "wandb")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert run.series("ce_ema") == {int(r["step"]): float(r["ce_ema"]) for r in rows} and len(rows) == 5
    assert (run.project, run.group, run.name, run.job_type) == ("reid-tune", "reid-tune-train", "run", "train")
    assert run.config["max_steps"] == 5 and run.exit_code == 0
    assert_no_wandb_process_left(home)
    assert list(Path(home, ".cache", "wandb", "logs").glob("core-debug-*.log"))


def test_wandb_mode_is_offline_without_a_key_and_follows_wandb_mode_and_an_api_key(no_wandb_account, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no .netrc, no W&B settings: no stored key
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # in this process's environment only: nothing written
    assert wandb_mode() == "online"  # a key: online, as W&B itself does
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's old word for offline
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_the_run_files_go_with_the_experiment_unless_wandb_dir_says_where(no_wandb_account, monkeypatch, tmp_path):
    from tuner.storage import location

    assert wandb_folder(tmp_path / "exp") == tmp_path / "exp"
    assert wandb_folder(location("s3://bucket/exp?endpoint_override=127.0.0.1:1")) == Path.cwd()  # not on this machine
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    assert wandb_folder(tmp_path / "exp") == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    "environment, flag, message",
    [
        ({"WANDB_MODE": "online"}, [], "WANDB_MODE=online needs a W&B API key: run `wandb login` or set WANDB_API_KEY"),
        ({"WANDB_MODE": "offlne"}, [], "WANDB_MODE is 'offlne', but must be online, offline or disabled"),
        ({}, ["my/project"], "--wandb project 'my/project' holds /"),
    ],
    ids=["online without a key", "unknown mode", "bad project name"],
)
@pytest.mark.parametrize("command", ["search", "train"])
def test_a_wandb_mistake_is_one_line_before_anything_starts(
    command, environment, flag, message, tmp_path, no_wandb_account, monkeypatch, capsys
):
    from tuner.search import main as search_main

    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    argv = ["--wandb", *flag, "--out" if command == "train" else "--storage-path", str(tmp_path / "out")]
    code = (train_main if command == "train" else search_main)(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()



@pytest.mark.ray
def test_a_run_wandb_refuses_is_one_line_and_the_search_goes_on(ray_session, tmp_path, no_wandb_account, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_API_KEY", "typo")  # a key: online; W&B refuses it at its first call (this process only)
    code, exp = run_search(tmp_path, "wbfail", [{"head_lr": 1e-6}], extra=["--wandb", *SHORT])
    assert code == 0 and (exp / "results.csv").is_file()  # the search itself is untouched
    printed = capfd.readouterr()
    assert "W&B: logging to project reid-tune online" in printed.out
    (trial,), _ = read_trial_folders(exp)
    told = [line for line in printed.err.splitlines() if line.startswith("W&B:")]
    assert len(told) == 1 and f"W&B: trial {trial.trial_id} was not logged" in told[0] and "API key" in told[0]
    assert_no_wandb_process_left(ray_session)
