"""The simulation: the parametric family through the real scheduler, rule and searcher; its command's bad inputs;
and a recorded real search replayed under its own settings ends each trial as the live search did."""

from __future__ import annotations

import pytest

from tuner.simulation.curves import STUCK, Family, recorded_curves
from tuner.simulate import RecordedOrder, build_parser, live_agreement, main, simulate
from tuner.simulation.engine import Policy, ReplaySettings, replay

SMALL = ["--trials", "150", "--workers", "8", "--max-steps", "240", "--grace-steps", "60", "--seed", "3"]


@pytest.fixture(scope="module")
def runs():
    return {r.policy.name: r for r in simulate(build_parser().parse_args(SMALL), out=lambda line: None)}


def test_without_early_stopping_every_trial_runs_its_budget_unless_its_loss_is_not_finite(runs):
    assert {e.reason for e in runs["none"].ended} <= {"completed", "diverged"}
    assert len(runs["none"].ended) == 150


def test_the_chance_level_rule_catches_every_stuck_curve_and_no_rule_less_policy_calls_one_stuck(runs):
    for name, run in runs.items():
        stuck = [e for e in run.ended if e.kind == STUCK]
        assert stuck, "the family draws stuck curves from the default space"
        verdicts = [e for e in run.ended if e.reason == "stuck_at_chance"]
        if name.endswith("+chance"):
            assert all(e.reason != "completed" for e in stuck)
        else:
            assert not verdicts


def test_early_stopping_spends_less_and_every_policy_replays_the_same_configs(runs):
    spent = {name: sum(e.samples for e in run.ended) for name, run in runs.items()}
    assert all(spent[name] < spent["none"] for name in spent if name != "none")
    configs = {name: sorted(repr(e.config) for e in run.ended) for name, run in runs.items()}
    assert len({tuple(c) for c in configs.values()}) == 1


def test_a_curve_is_the_same_for_the_same_config_and_seed_and_accumulation_slows_it_per_image():
    family = Family()
    a = family.curve({"head_lr": 1e-2, "grad_accum_steps": 1}, 300, (0, 1))
    assert a.ce_ema == family.curve({"head_lr": 1e-2, "grad_accum_steps": 1}, 300, (0, 1)).ce_ema
    slower = family.curve({"head_lr": 1e-2, "grad_accum_steps": 4}, 300, (0, 1))
    assert slower.samples[-1] == a.samples[-1] and slower.final > a.final


def test_the_command_prints_the_table_and_trials_per_second_last(capsys):
    assert main([*SMALL, "--trials", "40", "--policies", "none,rasha+chance", "--report-every", "5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "every 5th step" in out[0]
    assert any(line.startswith("rasha+chance") for line in out)
    assert out[-1].endswith("trials/s")


def test_an_earlier_first_rung_cuts_learners_sooner_and_the_window_still_judges_stuck_curves(runs):
    earlier = {r.policy.name: r for r in simulate(build_parser().parse_args(SMALL + ["--first-rung-steps", "15", "--policies", "rasha,rasha+chance"]), out=lambda line: None)}
    first_cut = lambda run: min(e.samples for e in run.ended if e.reason == "asha")  # noqa: E731
    assert first_cut(earlier["rasha"]) < first_cut(runs["rasha"]) and first_cut(earlier["rasha"]) >= 15 * 32
    assert sum(e.samples for e in earlier["rasha"].ended) < sum(e.samples for e in runs["rasha"].ended)
    stuck = lambda run: {e.config["head_lr"] for e in run.ended if e.reason == "stuck_at_chance"}  # noqa: E731
    assert stuck(earlier["rasha+chance"]) and stuck(earlier["rasha+chance"]) <= stuck(runs["rasha+chance"]) | {e.config["head_lr"] for e in runs["rasha+chance"].ended if e.reason == "asha"}


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--trials", "0"], "--trials is 0"),
        (["--policies", "asha,fifo"], "unknown policy 'fifo'"),
        (["--grace-steps", "500", "--max-steps", "100"], "--grace-steps 500 exceeds --max-steps 100"),
        (["--reduction-factor", "1"], "--reduction-factor is 1.0"),
        (["--first-rung-steps", "500", "--grace-steps", "50", "--max-steps", "100"], "--first-rung-steps 500 exceeds --max-steps 100"),
        (["--first-rung-steps", "0"], "--first-rung-steps is 0"),
        (["--from", "/nonexistent/exp"], "not a folder"),
        (["--space", "nope"], "unknown search space 'nope'"),
        (["--searcher", "grid"], "invalid choice"),
    ],
)
def test_bad_inputs_are_one_line_and_exit_2(argv, words, capsys):
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own checks (choices) exit from the parser
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1


def test_a_recorded_search_replayed_under_its_own_settings_ends_each_trial_as_it_did_live(learner_and_stuck):
    code, exp, frame = learner_and_stuck
    assert code == 0
    search, curves = recorded_curves(exp)
    settings = ReplaySettings(search.grace_samples, search.max_samples, search.reduction_factor, search.chance_margin, workers=2)
    agree, total, agree_free, free = live_agreement(settings, curves)
    print(f"agreement with the live search: {agree}/{total}; order-free {agree_free}/{free}")
    assert total == len(frame) and agree_free == free > 0
    # The chance-level verdicts: the same reason, at the very result where the live stopper ended the trial.
    live = {c.trial_id: c for c in curves}
    run = replay(Policy("rasha", True), settings, len(curves), lambda n, config: curves[n], RecordedOrder(curves))
    for ended in run.ended:
        recorded = live[ended.trial_id]
        if recorded.end in ("stuck_at_chance", "diverged") or ended.reason in ("stuck_at_chance", "diverged"):
            assert (ended.reason, ended.samples) == (recorded.end, recorded.samples[-1])
    assert "stuck_at_chance" in {c.end for c in curves}
