"""Which searched value mattered: Optuna's PED-ANOVA over every trial that ended, each at the last value it reached.

The unit tests build the table of trials by hand (what `tuner.results` reads from a search's files), no Ray;
one real search (`knob_search`) checks the summary and the report.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tuner.importance import MIN_TRIALS, distribution, param_importances
from tuner.report import main as report_main
from tuner.settings import SearchSettings

ROOT = Path(__file__).resolve().parents[2]
SPACE = {"head_lr": "loguniform[1e-07, 0.1]", "grad_accum_steps": "choice[1, 2, 4, 8]", "ce_only_steps": "randint[0, 200]"}
HEAD_LRS = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 1e-1]
ACCUMS = [4, 1, 8, 2, 1, 8, 2, 4]  # shuffled against the head LRs
WARMUPS = [120, 10, 190, 60, 150, 30, 80, 170]


def settings(space=SPACE, **kw) -> SearchSettings:
    values = dict(base={}, space=space, metric="ce_ema", mode="min", grace_samples=1920, chance_margin=0.39,
                  max_samples=4800, num_trials=8, reduction_factor=2.0, trainable="pkg.mod:fn")  # fmt: skip
    return SearchSettings(**{**values, **kw})


def ce_at(head_lr: float) -> float:
    """The shape measured on the default: at chance below ~1e-4, learning above."""
    return 5.99 - 4 / (1 + math.exp(-3 * (math.log10(head_lr) + 3.5)))


def table(decides: str = "head_lr") -> pd.DataFrame:
    """Eight trials as results.csv has them: the knob ``decides`` sets ce_ema; low ones stopped early, as stuck or cut."""
    rows = []
    for i, (lr, accum, warm) in enumerate(zip(HEAD_LRS, ACCUMS, WARMUPS)):
        driver = {"head_lr": lr, "grad_accum_steps": 10 ** (-7 + 6 * [1, 2, 4, 8].index(accum) / 3), "ce_only_steps": 10 ** (-7 + 6 * warm / 200)}
        ce = ce_at(driver[decides])
        reason = "stuck_at_chance" if ce > 5.6 else ("asha" if ce > 4 else "completed")
        samples = 1920 if reason != "completed" else 4800
        rows.append({"trial_id": f"t{i}", "head_lr": lr, "grad_accum_steps": accum, "ce_only_steps": warm,
                     "end_reason": reason, "samples": samples, "final_ce_ema": ce})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("knob", ["head_lr", "grad_accum_steps", "ce_only_steps"])
def test_the_knob_that_decides_the_outcome_is_ranked_first(knob):
    found = param_importances(table(decides=knob), settings())
    assert list(found.values)[0] == knob, found
    assert found.values[knob] > 0.5 and math.isclose(sum(found.values.values()), 1.0)
    assert found.trials == 8  # the stuck and the cut ones counted, at the value they reached


def test_one_line_per_knob_most_important_first():
    lines = param_importances(table(), settings()).lines()
    assert lines[0].startswith("importance for ce_ema (Optuna's PED-ANOVA") and "best 3 of 8 trials" in lines[0]
    knobs = [re.fullmatch(r"  (\w+) +(\d\.\d\d)", line).groups() for line in lines[1:]]
    assert len(knobs) == 3 and sorted(k for k, _ in knobs) == sorted(SPACE) and knobs[0][0] == "head_lr"
    values = [float(v) for _, v in knobs]
    assert values == sorted(values, reverse=True) and values[0] > 0.5


def test_a_trial_stopped_early_is_valued_at_the_last_value_it_reached_and_a_diverged_one_at_the_worst():
    frame = table()
    frame.loc[7, ["end_reason", "final_ce_ema"]] = ["diverged", math.nan]  # head LR 0.1 blew up: no finite value
    found = param_importances(frame, settings())
    assert found.trials == 8 and list(found.values)[0] == "head_lr"


def test_errored_and_unfinished_trials_are_left_out_and_below_the_minimum_it_says_so_in_one_line():
    frame = table()
    frame.loc[:2, "end_reason"] = ["error", "unfinished", "error"]
    found = param_importances(frame, settings())
    assert found.trials == 5 and not found.values
    assert found.lines() == [f"importance: 5 trials valued, 3 errored or unfinished left out; it needs at least {MIN_TRIALS} (more --num-trials)"]
    assert param_importances(table().head(MIN_TRIALS), settings()).values  # at the minimum: computed


@pytest.mark.parametrize(
    "frame, kw, words",
    [
        (table(), {"scheduler": "pbt"}, "not computed under --scheduler pbt"),
        (table(), {"space": {"head_lr": SPACE["head_lr"]}}, "one searched value (head_lr): nothing to rank it against"),
        (table().assign(final_ce_ema=5.99), {}, "every trial reached the same ce_ema"),
    ],
)
def test_where_there_is_nothing_to_rank_it_says_why_in_one_line(frame, kw, words):
    (line,) = param_importances(frame, settings(**kw)).lines()
    assert line.startswith("importance: ") and words in line


def test_a_retrieval_metric_is_maximised():
    frame = table().rename(columns={"final_ce_ema": "final_val_r1"})
    frame["final_val_r1"] = 100 - frame["final_val_r1"] * 15  # a lower CE, a higher R@1
    found = param_importances(frame, settings(metric="val_r1", mode="max"))
    assert list(found.values)[0] == "head_lr"


def test_the_same_experiment_gives_the_same_numbers_in_another_process():
    # no seed to keep: PED-ANOVA has no randomness; the order of tied knobs is the space's, not a set's
    script = (
        "from tests.tuner.test_importance import table, settings; from tuner.importance import param_importances; "
        "print(param_importances(table(), settings()).lines())"
    )
    runs = {
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout  # fmt: skip
        for seed in ("1", "2")
    }
    assert len(runs) == 1 and "head_lr" in runs.pop()


@pytest.mark.parametrize(
    "description, observed, expected",
    [
        ("loguniform[1e-07, 0.1]", [1e-3], "FloatDistribution(high=0.1, log=True, low=1e-07, step=None)"),
        ("uniform[0.0, 0.3]", [0.1], "FloatDistribution(high=0.3, log=False, low=0.0, step=None)"),
        ("quniform[0.0, 0.3, 0.1]", [0.30000000000000004], "FloatDistribution(high=0.30000000000000004, log=False, low=0.0, step=None)"),
        ("randint[0, 200]", [5, 199], "IntDistribution(high=199, log=False, low=0, step=1)"),
        ("lograndint[1, 64]", [2], "IntDistribution(high=63, log=True, low=1, step=1)"),
        ("qrandint[0, 200, 50]", [200], "IntDistribution(high=200, log=False, low=0, step=1)"),
        ("choice[1, 2, 4, 8]", [2.0], "CategoricalDistribution(choices=(1, 2, 4, 8))"),
        ("choice['a', 'b']", ["c"], "CategoricalDistribution(choices=('a', 'b', 'c'))"),
    ],
)
def test_each_domain_becomes_the_optuna_distribution_that_holds_every_value_drawn(description, observed, expected):
    assert repr(distribution(description, observed)) == expected


# --- a real search -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ray
def test_a_real_search_where_head_lr_decides_ranks_it_first_in_the_summary_and_the_report(knob_search, capsys):
    code, exp, printed, _ = knob_search
    assert code == 0, printed
    results = pd.read_csv(exp / "results.csv", dtype={"trial_id": str})
    assert {"stuck_at_chance", "completed"} <= set(results.end_reason)  # stopped trials are among those valued
    summary = printed[printed.index("importance for ce_ema") :].splitlines()
    assert "best 3 of 8 trials" in summary[0]
    ranked = [re.fullmatch(r"  (\w+) +(\d\.\d\d)", line) for line in summary[1:3]]
    assert [m.group(1) for m in ranked] == ["head_lr", "ce_only_steps"], printed
    assert float(ranked[0].group(2)) > float(ranked[1].group(2))
    assert (exp / "importance.png").stat().st_size > 10_000 and "importance.png" in printed

    reports = []
    for _ in range(2):  # the report, twice: the same lines as the summary
        assert report_main([str(exp), "--no-plots"]) == 0
        out = capsys.readouterr().out
        reports.append(out[out.index("importance for ce_ema") :].splitlines()[:3])
    assert reports[0] == reports[1] == summary[:3]
