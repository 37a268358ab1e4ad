"""Every kind of bad input, across the three commands: one line naming the problem, exit 2, no traceback,
nothing written. In-process (`main(argv)`), so the whole table runs in seconds; the per-command test
files also check a few of these through a real subprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from reid_core.train import main as train_main
from tests.reid_core.tiny_datasets import write_cuhk
from tuner.report import main as report_main
from tuner.diagnose import main as diagnose_main
from tuner.search import main as search_main
from tuner.settings import SearchSettings


def cuhk(tmp: Path, damage: Callable[[Path], None] | None = None) -> str:
    annotations = write_cuhk(tmp / "cuhk")
    if damage is not None:
        damage(tmp / "cuhk")
    return str(annotations.parent)


def first_image(root: Path) -> Path:
    return sorted((root / "imgs").rglob("*.jpg"))[0]


def text(tmp: Path, name: str, content: str) -> str:
    (tmp / name).write_text(content)
    return str(tmp / name)


def experiment(tmp: Path) -> str:
    (tmp / "exp").mkdir()
    return str(tmp / "exp")


def searched(tmp: Path) -> str:
    """An experiment folder as a search starts it (its settings, no trial yet)."""
    (tmp / "searched").mkdir()
    SearchSettings(base={}, space={"head_lr": "loguniform[1e-06, 0.1]"}, metric="ce_ema", mode="min", grace_samples=1920,
                   chance_margin=0.39, max_samples=4800, num_trials=2, reduction_factor=2.0).save(tmp / "searched")  # fmt: skip
    return str(tmp / "searched")


def study_named_exp(tmp: Path) -> str:
    """A SQLite Optuna storage already holding a study named as the table's searches are (exp)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{tmp / 'studies.db'}", study_name="exp")
    return f"sqlite:///{tmp / 'studies.db'}"


# (command, argv builder, words the message must contain)
CASES: dict[str, tuple[Callable, Callable[[Path], list[str]], str]] = {
    # python -m reid_core.train
    "unknown config key": (train_main, lambda t: ["--set", "head_lrr=1e-3"], "did you mean 'head_lr'"),
    "wrong type": (train_main, lambda t: ["--set", "batch_size=abc"], "must be an integer"),
    "invalid value": (train_main, lambda t: ["--set", "head_lr=-1"], "must be > 0"),
    "negative holdout": (train_main, lambda t: ["--set", "holdout_per_id=-1"], "'holdout_per_id' is -1, but must be >= 0"),
    "holdout leaves nothing": (train_main, lambda t: ["--set", "holdout_per_id=2", "holdout_min_images=2"], "an identity must keep an image"),
    "unseen_every 0": (train_main, lambda t: ["--set", "unseen_every=0"], "'unseen_every' is 0, but must be >= 1"),
    "bad labels": (train_main, lambda t: ["--set", "num_classes=300"], "labels span [0, 399]"),
    "missing config file": (train_main, lambda t: ["--config", str(t / "nope.yaml")], "does not exist"),
    "malformed config": (train_main, lambda t: ["--config", text(t, "c.yaml", "head_lr: [1,")], "cannot parse config"),
    "missing images": (
        train_main, lambda t: ["--data", cuhk(t, lambda r: first_image(r).unlink())], "missing"
    ),
    "corrupt image": (
        train_main, lambda t: ["--data", cuhk(t, lambda r: first_image(r).write_bytes(b"not a jpeg"))], "not readable images"
    ),
    "empty data set": (train_main, lambda t: ["--data", str(Path(text(t, "reid_raw.json", "[]")).parent)], "is empty"),
    "unreadable pretrained file": (
        train_main, lambda t: ["--pretrained", text(t, "weights.pt", "garbage")], "cannot load pretrained weights"
    ),
    # python -m tuner.search
    "bad space YAML": (search_main, lambda t: ["--space", text(t, "s.yaml", "head_lr: {loguniform: [1e-6")], "cannot parse search space"),
    "unknown space": (search_main, lambda t: ["--space", "defualt"], "unknown search space"),
    "key outside TrainConfig": (search_main, lambda t: ["--space", text(t, "s.yaml", "lr: {choice: [1]}")], "unknown config key 'lr'"),
    "bad domain": (search_main, lambda t: ["--space", text(t, "s.yaml", "head_lr: {loguniform: [0, 1]}")], "low > 0"),
    "negative budget": (search_main, lambda t: ["--max-steps", "-1"], "--max-steps is -1"),
    "first rung past the budget": (search_main, lambda t: ["--first-rung-steps", "9999"], "--first-rung-steps 9999 exceeds --max-steps"),
    "unknown verdict": (search_main, lambda t: ["--verdict", "sometimes"], "invalid choice: 'sometimes'"),
    "unreachable cluster": (search_main, lambda t: ["--address", "127.0.0.1:1"], "cannot reach the Ray cluster"),
    "resume of a non-experiment": (search_main, lambda t: ["--resume", "--name", "nothing"], "holds no reid-tune experiment"),
    "missing data set": (search_main, lambda t: ["--data", str(t / "no-data")], "data"),
    "bad Optuna storage URL": (search_main, lambda t: ["--optuna-storage", "nosuchdb://x"], "not a database URL Optuna accepts"),
    "Optuna storage in a missing folder": (search_main, lambda t: ["--optuna-storage", f"sqlite:///{t}/none/optuna.db"], "none' does not exist"),
    "Optuna storage without its driver": (search_main, lambda t: ["--optuna-storage", "mysql://me@127.0.0.1:1/db"], "driver is not installed"),
    "Optuna study name taken": (search_main, lambda t: ["--optuna-storage", study_named_exp(t)], "already holds a study named 'exp'"),
    "Optuna storage with random draws": (search_main, lambda t: ["--searcher", "random", "--optuna-storage"], "there is no study"),
    "Optuna storage under PBT": (search_main, lambda t: ["--scheduler", "pbt", "--optuna-storage"], "there is no study"),
    # python -m tuner.diagnose
    "diagnose of a missing run": (diagnose_main, lambda t: [str(t / "none")], "does not exist"),
    "diagnose of a log without the contract's keys": (diagnose_main, lambda t: [text(t, "l.jsonl", '{"step": 1}')], "lacks samples, ce"),
    # python -m tuner.report
    "report of a non-experiment": (report_main, lambda t: [experiment(t)], "is not a reid-tune experiment"),
    "report of a missing folder": (report_main, lambda t: [str(t / "none")], "does not exist"),
    "HTML page in a missing folder": (report_main, lambda t: [searched(t), "--html", str(t / "no" / "r.html")], "no' does not exist"),
    "HTML page onto a folder": (report_main, lambda t: [searched(t), "--html", str(t)], "is a folder"),
    "HTML page and --compare": (report_main, lambda t: [searched(t), "--html", "--compare", str(t)], "pass one of them"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_no_traceback_nothing_written(case, tmp_path, capsys):
    command, build, words = CASES[case]
    argv = build(tmp_path)
    out = tmp_path / "out"
    if command is train_main:
        argv += ["--out", str(out), "--set", "max_steps=2"]
    elif command is search_main:
        argv += ["--storage-path", str(out), "--name", "exp"]
    before = sorted(p for p in tmp_path.rglob("*"))
    try:
        code = command(argv)
    except SystemExit as stop:  # argparse's own usage errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err
    assert not out.exists()
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere, not half a file
