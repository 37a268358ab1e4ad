"""The chance-level rule on plain metric sequences: no Ray session needed."""

import csv
import io
import math
import pickle
from pathlib import Path

import pytest

from reid_core.chance import DEFAULT_CHANCE_MARGIN, ChanceLevelRule, go_line
from reid_core.config import TrainConfig
from reid_core.runner import RunWriter
from tuner.stoppers import ChanceLevelStopper

CHANCE = math.log(400)  # 5.99
GRACE = 300 * 32  # the seed's smoke window: 300 steps of 32 images


def results(ce_emas, images_per_step=32):
    """Results as a trial reports them, one per optimizer step."""
    return [
        {"step": i + 1, "samples": (i + 1) * images_per_step, "ce": v, "ce_ema": v, "chance_ce": CHANCE}
        for i, v in enumerate(ce_emas)
    ]


def first_stop(rule, stream):
    """(reason, samples) of the first stop verdict, or (None, None)."""
    for r in stream:
        reason = rule(r)
        if reason is not None:
            return reason, r["samples"]
    return None, None


def linear(start, end, n):
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def test_flat_trial_at_chance_stops_at_the_first_report_past_the_grace_window():
    reason, samples = first_stop(ChanceLevelRule(GRACE), results([CHANCE - 0.001] * 400))
    assert reason == "stuck_at_chance"
    assert GRACE <= samples <= GRACE + 32  # latency: at most one report


def test_slow_learner_above_the_line_but_falling_is_left_alone():
    # The measured head LR 1.5e-4 case: ce_ema 5.79 at the grace window and still falling.
    curve = linear(CHANCE, 5.79, 300) + linear(5.79, 5.40, 200)
    reason, _ = first_stop(ChanceLevelRule(GRACE), results(curve))
    assert reason is None


def test_slow_learner_whose_fall_stalls_above_the_line_is_stopped_later():
    curve = linear(CHANCE, 5.79, 300) + linear(5.79, 5.75, 60) + [5.75] * 200
    reason, samples = first_stop(ChanceLevelRule(GRACE), results(curve))
    assert reason == "stuck_at_chance"
    assert samples > GRACE + 32  # not at the window: it got its second look


def test_a_trial_below_the_go_line_is_never_stuck():
    curve = linear(CHANCE, 4.0, 300) + [4.0] * 200  # flat, but well below 5.6
    assert first_stop(ChanceLevelRule(GRACE), results(curve)) == (None, None)


def test_a_trial_that_rises_back_above_the_line_and_stays_flat_is_stuck():
    curve = linear(CHANCE, 5.5, 300) + [5.8] * 300
    reason, _ = first_stop(ChanceLevelRule(GRACE), results(curve))
    assert reason == "stuck_at_chance"


def test_nothing_is_judged_before_the_grace_window():
    reason, _ = first_stop(ChanceLevelRule(GRACE), results([CHANCE] * 299))
    assert reason is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_ce_diverges_at_once_even_before_the_window(bad):
    stream = results([5.9] * 10)
    stream[4]["ce"] = bad
    reason, samples = first_stop(ChanceLevelRule(GRACE), stream)
    assert (reason, samples) == ("diverged", 5 * 32)


def test_time_axis_is_samples_so_accumulation_does_not_delay_the_verdict():
    # grad_accum_steps=8: 256 images per step, the window passes at step 38
    reason, samples = first_stop(ChanceLevelRule(GRACE), results([CHANCE] * 100, images_per_step=256))
    assert reason == "stuck_at_chance"
    assert GRACE <= samples <= GRACE + 256


def test_chance_level_follows_each_results_chance_ce():
    # 50 identities: chance 3.91, Go line 3.52. A flat 3.9 is stuck; a flat 3.4 is not.
    stuck = [dict(r, chance_ce=math.log(50)) for r in results([3.9] * 400)]
    fine = [dict(r, chance_ce=math.log(50)) for r in results([3.4] * 400)]
    assert first_stop(ChanceLevelRule(GRACE), stuck)[0] == "stuck_at_chance"
    assert first_stop(ChanceLevelRule(GRACE), fine)[0] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"grace_samples": 0}, "grace_samples > 0"),
        ({"grace_samples": GRACE, "margin": 0}, "margin > 0"),
        ({"grace_samples": GRACE, "trend_samples": 2 * GRACE}, "trend_samples <= grace_samples"),
        ({"grace_samples": GRACE, "trend_samples": 0}, "0 < trend_samples"),
    ],
)
def test_invalid_arguments_name_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChanceLevelStopper(**kwargs)


def test_stopper_keeps_per_trial_state_and_records_reasons():
    stopper = ChanceLevelStopper(GRACE)
    stuck, learning = results([CHANCE] * 320), results(linear(CHANCE, 4.0, 320))
    decisions = {"a": [], "b": []}
    for ra, rb in zip(stuck, learning):
        decisions["a"].append(stopper("a", ra))
        decisions["b"].append(stopper("b", rb))
        if decisions["a"][-1]:
            break
    assert decisions["a"][-1] is True and not any(decisions["b"])
    assert stopper.reasons == {"a": "stuck_at_chance"}
    assert stopper.stop_all() is False


def test_stopper_survives_a_pickle_round_trip_mid_trial():
    stopper = ChanceLevelStopper(GRACE)
    stream = results([CHANCE] * 400)
    for r in stream[:200]:
        assert stopper("t", r) is False
    clone = pickle.loads(pickle.dumps(stopper))  # Ray ships the stopper; restores unpickle it
    verdicts = [clone("t", r) for r in stream[200:301]]
    assert verdicts.index(True) == 99  # step 300 = the window, exactly as without the round trip
    assert clone.reasons == {"t": "stuck_at_chance"}


# --- one rule for both jobs -----------------------------------------------------------------------

CURVES = Path(__file__).parent.parent / "data" / "curves"  # recorded plain runs of the random-init default


def recorded(name: str) -> list[dict]:
    with open(CURVES / f"{name}.csv", newline="") as f:
        return [{k: float(v) if k not in ("step", "samples", "skipped_steps") else int(v) for k, v in r.items()} for r in csv.DictReader(f)]


@pytest.mark.parametrize(
    "curve, verdict_step",
    [("flat_head_lr_1e-6", 300), ("slow_learner_head_lr_3e-4", None)],
    ids=["flat near chance: stuck at the window", "slow learner above the line at the window: goes on"],
)
def test_plain_job_and_search_reach_the_same_verdict_on_the_same_curve(curve, verdict_step, tmp_path):
    rows = recorded(curve)
    grace_steps, batch = 300, 32
    # the search: Ray's stopper, fed the trial's results in order
    stopper = ChanceLevelStopper(grace_steps * batch, DEFAULT_CHANCE_MARGIN)
    stopped = next((r for r in rows if stopper("trial", r)), None)
    # the plain job: its RunWriter, fed the same rows as train() would
    cfg = TrainConfig(batch_size=batch, max_steps=len(rows))
    writer = RunWriter(cfg, tmp_path / "run", stream=io.StringIO(), grace_samples=grace_steps * cfg.images_per_step, max_steps=cfg.max_steps)
    for r in rows:
        writer({**r, "images_per_s": 1.0})
    writer.close()
    assert (stopped["step"] if stopped else None) == writer.verdict_step == verdict_step
    assert stopper.reasons.get("trial") == writer.verdict == ("stuck_at_chance" if verdict_step else None)
    at_window = next(r for r in rows if r["step"] == grace_steps)
    # a pure threshold at the window would stop both; the trend rule keeps the one still clearly falling
    assert at_window["ce_ema"] > go_line(at_window["chance_ce"])
    if verdict_step is None:
        assert rows[-1]["ce_ema"] < go_line(rows[-1]["chance_ce"])  # and it did cross the Go line later


def test_a_restore_to_an_earlier_point_is_judged_as_the_curve_without_the_steps_it_undid():
    # A retry or PBT's exploit restores a checkpoint: images seen go back. The live rule (every report) and the
    # tables' replay (the curve as read back: the undone steps dropped) must reach the same verdict, same step.
    # Here: falling from step 150, restored at step 310 after running on to 420 (below the line), then flat above it.
    falling = [CHANCE] * 150 + linear(CHANCE, 5.70, 160) + linear(5.70, 5.0, 110)
    undone = results(falling)
    kept = undone[:310] + results([0.0] * 310 + [5.72] * 200)[310:]
    live = first_stop(ChanceLevelRule(GRACE), [*undone, *kept[310:]])
    replayed = first_stop(ChanceLevelRule(GRACE), kept)
    assert live == replayed and live[0] == "stuck_at_chance"
